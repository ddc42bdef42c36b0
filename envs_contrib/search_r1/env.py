"""Search-R1's protocol as an agentrl env.

The model reasons, asks ``<search>query</search>`` and gets the retriever's passages back inside
``<information>...</information>`` (an observation: tokens it did not write, loss-masked by the
rollout runner), and ends with ``<answer>...</answer>``, scored by exact match with Search-R1's
normalisation against the task's gold answers (a string or a list). A correct answer earns 1.
Shaping, off by default: with ``answer_metric="f1"`` a wrong answer earns its token F1 against the
gold answers (partial credit for, say, copying the passage's sentence instead of its entity); a
wrong answer earns at least ``format_score`` when it is well-formed (with
``format_requires_search``, only after at least one search); and the first search whose passages
contain a gold answer earns ``retrieval_score`` at that step, whatever comes after (the episode's
return is the sum). Unlike a format score, a model cannot collect the last two without finding
the answer.

* A turn with neither a closed ``<search>`` nor a closed ``<answer>`` gets a corrective
  observation (``invalid_message``); so does an empty query. An empty result is an observation too ("no results").
* A retriever that is down, slow past its timeout after its retries, or answering garbage raises
  :class:`~agentrl.errors.EnvError`: that episode ends as ``env_error``, the batch goes on.
* ``search_enabled=False`` answers every search with "search is disabled" (the no-search control).
* ``max_searches`` caps the searches of an episode, as Search-R1's final turn without search does:
  the observation of the last one ends with ``last_search_message`` ("write the answer now"), and a
  search past it is not run: it gets that message again and counts as an invalid turn. With
  ``answer_prefill`` the turn after the last search starts with the answer tag, written for the
  model (a prefill: masked, and part of the action the env parses).
* The turn limit is the registry's ``MaxTurns`` wrapper (``max_turns``), which truncates.

``info`` (per episode, averaged by the trainer's metrics): ``searches``, ``answered``,
``correct``, ``invalid_turns``, ``retrieval_retries``, ``retrieved_answer``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from agentrl.envs import Action, Env, Message, StepResult, Task
from agentrl.rewards.text import contains_answer, exact_match, f1_score
from envs_contrib.search_r1.retriever import RetrieverClient

INSTRUCTION = (
    "Answer the question. Think inside <{think}> and </{think}> whenever you get new information. "
    "If you need knowledge you lack, search with <{search}> query </{search}>; the results come back "
    "between <{information}> and </{information}>. Search as often as you need. When you know the "
    "answer, give it inside <{answer}> and </{answer}> without explanation, for example "
    "<{answer}> Paris </{answer}>. Question: {question}\n"
)
INVALID = (
    "My previous action is invalid. To search, I put the query between <{search}> and </{search}>. "
    "To answer, I put the answer between <{answer}> and </{answer}>. Let me try again."
)

LAST_SEARCH = "You have no searches left. Write the answer now: <{answer}> your answer </{answer}>\n"


class SearchR1Env(Env):
    """Answer a question, searching a retriever as often as needed. See the module docstring.

    Args:
        retriever_url: Search-R1's ``/retrieve`` endpoint.
        topk: passages per search.
        timeout_s, retries: per retrieval attempt, and attempts after the first.
        answer_metric: ``"em"``: a wrong answer earns 0; ``"f1"``: its token F1 (SQuAD's).
        format_score: the least reward of a well-formed wrong answer.
        format_requires_search: a wrong answer earns ``format_score`` only after a search (so a
            model cannot collect it by answering blind).
        retrieval_score: reward of the first search that retrieves a passage holding a gold answer.
        search_enabled: False answers searches with "search is disabled" (control runs).
        max_searches: searches per episode; None: no cap (the turn limit still applies).
        last_search_message: appended to the last search's observation, a template of the tags
            and ``{question}`` (the episode's question, restated next to the answer turn).
        answer_prefill: the turn after the last search starts with ``<answer>`` (needs ``max_searches``).
        tags: names of the ``think``, ``search``, ``information`` and ``answer`` tags.
        observation_role: the chat role observations are sent as.
        instruction: the first user message, a template with ``{question}`` and the tag names
            (``{search}``, ``{answer}`` ...); default: Search-R1's instruction.
        invalid_message: the corrective observation, a template of the tag names; default:
            Search-R1's, which spells out ``<answer> and </answer>`` (a model can echo it).
    """

    def __init__(
        self, retriever_url: str = "http://127.0.0.1:8000/retrieve", *, topk: int = 3, timeout_s: float = 5.0, retries: int = 2,
        answer_metric: Literal["em", "f1"] = "em", format_score: float = 0.0, format_requires_search: bool = False, retrieval_score: float = 0.0,
        search_enabled: bool = True, max_searches: int | None = None, last_search_message: str = LAST_SEARCH, answer_prefill: bool = False, tags: dict[str, str] | None = None,
        observation_role: str = "user", instruction: str = INSTRUCTION, invalid_message: str = INVALID,
    ) -> None:
        self.tags = {"think": "think", "search": "search", "information": "information", "answer": "answer", **(tags or {})}
        self.retriever = RetrieverClient(retriever_url, topk=topk, timeout_s=timeout_s, retries=retries)
        self.format_score, self.format_requires_search, self.retrieval_score = format_score, format_requires_search, retrieval_score
        self.search_enabled, self.observation_role = search_enabled, observation_role
        if answer_metric not in ("em", "f1"):
            raise ValueError(f"answer_metric: expected 'em' or 'f1', got {answer_metric!r}")
        self.answer_metric = answer_metric
        self.instruction = _checked_template("instruction", instruction, question="?", **self.tags)
        self.invalid_message = _checked_template("invalid_message", invalid_message, **self.tags).format(**self.tags)
        if max_searches is not None and max_searches < 1:
            raise ValueError(f"max_searches: expected a positive number or None, got {max_searches!r}")
        if answer_prefill and max_searches is None:
            raise ValueError("answer_prefill: needs max_searches (the prefill follows the last search)")
        self.max_searches, self.answer_prefill = max_searches, answer_prefill
        self._last_search_template = _checked_template("last_search_message", last_search_message, question="?", **self.tags)
        self.last_search_message = self._last_search_template.format(question="", **self.tags)
        self._search = _tag_pattern(self.tags["search"])
        self._answer = _tag_pattern(self.tags["answer"])
        self._label: Any = None
        self._info: dict[str, Any] = {}

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self._label = task.label
        self._info = {"searches": 0, "answered": False, "correct": False, "invalid_turns": 0, "retrieval_retries": 0, "retrieved_answer": False}
        question = str(task.prompt).strip()
        if question and question[-1] != "?":
            question += "?"
        self.last_search_message = self._last_search_template.format(question=question, **self.tags)
        return [{"role": "user", "content": self.instruction.format(question=question, **self.tags)}], {}

    async def step(self, action: Action) -> StepResult:
        answer = _last(self._answer, action.text)
        if answer is not None:
            correct = bool(exact_match(answer, self._label))
            self._info |= {"answered": True, "correct": correct}
            return StepResult([], 1.0 if correct else self._wrong_answer_reward(answer), True, False, dict(self._info))
        query = _last(self._search, action.text)
        if query is None or not query.strip():
            self._info["invalid_turns"] += 1
            return self._observe(self.invalid_message)
        if self._searches_used_up:
            self._info["invalid_turns"] += 1
            return self._observe(self.last_search_message)
        self._info["searches"] += 1
        if not self.search_enabled:
            return self._observe(self._wrap("Search is disabled. Answer from what you know."))
        before = self.retriever.failed_attempts
        passages = await self.retriever.search(query.strip())
        self._info["retrieval_retries"] += self.retriever.failed_attempts - before
        found = not self._info["retrieved_answer"] and any(contains_answer(p, self._label) for p in passages)
        self._info["retrieved_answer"] |= found
        body = "\n".join(f"Doc {i}{p}" for i, p in enumerate(passages, 1)) if passages else "No results."
        return self._observe(self._wrap(body), reward=self.retrieval_score if found else 0.0)

    @property
    def _searches_used_up(self) -> bool:
        return self._info["searches"] == self.max_searches

    def _observe(self, content: str, reward: float = 0.0) -> StepResult:
        observation: list[Message] = [{"role": self.observation_role, "content": content}]
        if self.answer_prefill and self._searches_used_up:
            observation.append({"role": "assistant", "content": f"<{self.tags['answer']}>"})
        return StepResult(observation, reward, False, False, dict(self._info))

    def _wrap(self, text: str) -> str:
        tag = self.tags["information"]
        last = self.last_search_message if self._searches_used_up else ""
        return f"\n<{tag}>{text}</{tag}>\n{last}"

    def _wrong_answer_reward(self, answer: str) -> float:
        formatted = self._info["searches"] > 0 or not self.format_requires_search
        partial = f1_score(answer, self._label) if self.answer_metric == "f1" else 0.0
        return max(partial, self.format_score if formatted else 0.0)

    async def close(self) -> None:
        await self.retriever.aclose()

    def example_tasks(self) -> list[Task]:
        return [Task("What is the capital of France?", ["Paris"], index=0), Task("Which currency does Peru use?", ["sol", "Peruvian sol"], index=1)]


def _checked_template(field: str, template: str, **values: str) -> str:
    try:
        template.format(**values)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{field}: not a template of {sorted(values)}: {e!r}") from None
    return template


def _tag_pattern(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL)


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    matches = pattern.findall(text)
    return matches[-1].strip() if matches else None
