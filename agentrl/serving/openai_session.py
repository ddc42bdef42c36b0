"""Episode capture: one :class:`Session` per episode records, token-exact, what a client
conversing through the OpenAI endpoint was sampled.

Each request of a session:

1. turns the request's messages into template messages; an assistant message the session
   returned earlier (recognised by its text and calls, however the client re-serialised them)
   becomes the exact text that was sampled, so no retokenisation drift can enter;
2. the first request opens a :class:`~agentrl.rollout.conversation.TokenConversation`. A later
   one that extends the recorded messages (same tools) appends only the new messages' bridge
   tokens (mask 0), and the conversation checks the prefix property as it does for envs. A
   request that does not extend them (the client truncated, edited or reordered its history, or
   changed its tools) continues in a new segment, counted in ``history_edits`` and
   ``prefix_mismatches``; it never fails the episode;
3. samples ``n`` choices from the conversation's exact context and appends the first choice's
   ids verbatim (mask 1, with log-probs). A client that continues from another choice rewrites
   its history (step 2), so the recorded segments always hold what the model was conditioned on.

Requests of one session are served one after another (a lock): a session is one conversation.
A session ends (later requests get a 400 with its reason as ``code``) at its turn limit
(``max_turns_exceeded``), at its context limit (``context_length_exceeded``), after a turn cut by
its token budget when ``end_on_length`` (``length``), and when its generation is aborted or the
engine fails; :attr:`Session.ended` tells which :class:`~agentrl.rollout.Termination` that is.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.envs.core import Message
from agentrl.envs.tool_calls import ToolCallParser
from agentrl.errors import ChatTemplateError, PolicyError
from agentrl.policies.base import Generation, SamplingParams
from agentrl.rollout.conversation import BridgeMode, ChatRenderer, PrefixMismatchError, TokenConversation
from agentrl.rollout.runner import derive_seed
from agentrl.rollout.trajectory import Termination
from agentrl.serving.openai_protocol import ChatRequest, Choice, OpenAIError, assistant_key, make_choice, template_message

Generate = Callable[[Sequence[int], SamplingParams, str], Coroutine[Any, Any, Generation]]
"""``generate(input_ids, sampling, rid)``: one turn from the policy (``rid`` ends in ``:<turn>``)."""

END_CODES = {Termination.MAX_TURNS: "max_turns_exceeded", Termination.CONTEXT_LIMIT: "context_length_exceeded",
             Termination.LENGTH: "length", Termination.ABORT: "aborted"}


@dataclass(frozen=True)
class SessionConfig:
    """How a session samples and when it ends.

    Attributes:
        max_new_tokens: a turn's token budget when the request sets none; with
            ``fixed_sampling`` also its cap (a request's ``max_tokens`` may only lower it).
        max_context_len: most tokens in a segment, prompt and turns; ``None``: no limit.
        max_turns: most turns (requests answered) per session; ``None``: no limit.
        end_on_length: a turn cut by its budget ends the session (as the runner ends an episode).
        bridge_mode: see :mod:`agentrl.rollout.conversation`.
        fixed_sampling: when set (a training episode), every turn samples with its
            ``temperature``, ``top_p``, ``top_k`` and ``stop_token_ids``, its ``stop`` strings
            plus the request's, and, when its ``seed`` is set, ``derive_seed(seed, turn)``; the
            request's temperature, top_p and seed are ignored, since training must sample from
            the policy it trains. ``None``: the request's values, OpenAI's defaults otherwise.
    """

    max_new_tokens: int = 1024
    max_context_len: int | None = None
    max_turns: int | None = None
    end_on_length: bool = False
    bridge_mode: BridgeMode = "auto"
    fixed_sampling: SamplingParams | None = None


class Session:
    """One recorded conversation (an episode). See the module docstring.

    Args:
        session_id: names the session in request ids and URLs.
        renderer: the chat template.
        parser: reads tool calls from the sampled text.
        generate: the policy, for this session.
        config: sampling and limits.
    """

    def __init__(self, session_id: str, renderer: ChatRenderer, parser: ToolCallParser, generate: Generate, config: SessionConfig = SessionConfig()) -> None:
        self.id, self.renderer, self.parser, self.generate, self.config = session_id, renderer, parser, generate, config
        self.conversation: TokenConversation | None = None
        self.turns = 0
        self.weight_versions: list[int] = []
        self.history_edits = 0
        self.ended: Termination | None = None
        self.error: str | None = None
        self._returned: dict[str, str] = {}  # assistant_key of each returned choice -> the text recorded for it
        self._lock = asyncio.Lock()

    async def complete(self, request: ChatRequest) -> tuple[list[Choice], int]:
        """Answer ``request``; returns its choices and its prompt's length in tokens.

        Raises:
            OpenAIError: the session has ended or ends now (turn or context limit, abort,
                engine failure); the error's ``code`` says why.
        """
        async with self._lock:
            if self.ended is not None:
                raise OpenAIError(400, f"session {self.id} has ended ({self.ended.value}): {self.error}", code=END_CODES.get(self.ended, "session_ended"))
            prefill = self._advance(request)
            assert self.conversation is not None
            context = list(self.conversation.context_ids)
            sampling = self._sampling(request, len(context))
            generations = await self._sample(context, sampling, request.n)
            raw = self.conversation.add_generation(generations[0])
            self.weight_versions.append(generations[0].weight_version)
            texts = [raw] + [prefill + self.renderer.decode_action(g.token_ids) for g in generations[1:]]
            choices = [self._choice(g, text, i, parse=request.parse_tools) for i, (g, text) in enumerate(zip(generations, texts))]
            self.turns += 1
            if self.config.end_on_length and generations[0].finish_reason == "length":  # this answer still goes out; later requests are refused
                self.ended, self.error = Termination.LENGTH, f"turn {self.turns} reached its budget of {sampling.max_new_tokens} tokens"
            return choices, len(context)

    def _advance(self, request: ChatRequest) -> str:
        """Bring the conversation to the request's messages (open, bridge or rewrite); returns
        the prefill the next turn continues (``""`` for none). Messages the chat template refuses
        are a 400 that leaves the session as it was."""
        try:
            return self._bring_to([self._template(m) for m in request.messages], request.tools)
        except (ChatTemplateError, PrefixMismatchError) as e:
            raise OpenAIError(400, str(e), param="messages", code="chat_template_refused") from e

    def _bring_to(self, messages: list[Message], tools: list[dict[str, Any]] | None) -> str:
        conversation = self.conversation
        if conversation is None:
            self.conversation = TokenConversation(self.renderer, messages, tools=tools, mode=self.config.bridge_mode)
            return _prefill(messages)
        known = conversation.messages
        if tools == conversation.tools and messages[: len(known)] == known:
            new = messages[len(known):]
            conversation.add_observation(new, conversation.bridge_ids(new))
            return _prefill(new)
        conversation.restart(messages, tools=tools)
        self.history_edits += 1
        return _prefill(messages)

    def _template(self, message: dict[str, Any]) -> Message:
        if message["role"] == "assistant":
            raw = self._returned.get(assistant_key(message))
            if raw is not None:
                return {"role": "assistant", "content": raw}
        return template_message(message)

    def _sampling(self, request: ChatRequest, context_len: int) -> SamplingParams:
        """The turn's sampling (see :class:`SessionConfig`), its budget within the context limit."""
        cfg, fixed = self.config, self.config.fixed_sampling
        budget = request.max_tokens or cfg.max_new_tokens
        if cfg.max_turns is not None and self.turns >= cfg.max_turns:
            self._end(Termination.MAX_TURNS, f"the session's limit of {cfg.max_turns} turns was reached")
        if fixed is not None:
            budget = min(budget, cfg.max_new_tokens)
        if cfg.max_context_len is not None:
            budget = min(budget, cfg.max_context_len - context_len)
            if budget <= 0:
                self._end(Termination.CONTEXT_LIMIT, f"the prompt has {context_len} tokens, the context limit is {cfg.max_context_len}")
        if fixed is None:
            return SamplingParams(max_new_tokens=budget, temperature=1.0 if request.temperature is None else request.temperature,
                                  top_p=1.0 if request.top_p is None else request.top_p, stop=request.stop, seed=request.seed)
        seed = None if fixed.seed is None else derive_seed(fixed.seed, self.turns)
        return dataclasses.replace(fixed, max_new_tokens=budget, stop=(*fixed.stop, *request.stop), seed=seed)

    async def _sample(self, context: list[int], sampling: SamplingParams, n: int) -> list[Generation]:
        """``n`` generations of ``context``; choice ``i > 0`` gets its own seed (when seeded)."""
        def seeded(i: int) -> SamplingParams:
            return sampling if i == 0 or sampling.seed is None else dataclasses.replace(sampling, seed=derive_seed(sampling.seed, i))

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self.generate(context, seeded(i), f"{self.id}{f'-{i}' if i else ''}:{self.turns}")) for i in range(n)]
        except* PolicyError as failed:
            self._end(Termination.ABORT, f"the engine failed: {failed.exceptions[0]}", status=500)
        generations = [t.result() for t in tasks]
        if any(g.finish_reason == "abort" for g in generations):
            self._end(Termination.ABORT, "the request was aborted (the rollout step ended)", status=503)
        return generations

    def _choice(self, generation: Generation, raw: str, index: int, *, parse: bool) -> Choice:
        calls = self.parser(raw) if parse else ()
        choice = make_choice(generation, raw, calls, call_id=f"call_{self.turns}_{index}" if index else f"call_{self.turns}")
        self._returned[assistant_key(choice.message)] = raw
        return choice

    def _end(self, termination: Termination, reason: str, *, status: int = 400) -> None:
        """End the session and refuse the request that ended it.

        Raises:
            OpenAIError: always, with ``reason`` and the termination's code.
        """
        self.ended, self.error = termination, reason
        raise OpenAIError(status, f"session {self.id}: {reason}", code=END_CODES[termination])

    def record(self) -> dict[str, Any]:
        """What the session recorded, as JSON: segments, messages, counts, and how it ended."""
        conversation = self.conversation
        return {
            "id": self.id, "turns": self.turns, "weight_versions": list(self.weight_versions),
            "segments": [dataclasses.asdict(s) for s in conversation.segments] if conversation else [],
            "messages": list(conversation.messages) if conversation else [],
            "prefix_mismatches": conversation.prefix_mismatches if conversation else 0, "history_edits": self.history_edits,
            "ended": None if self.ended is None else self.ended.value, "error": self.error,
        }


def _prefill(messages: list[Message]) -> str:
    """The text of a trailing assistant message the next turn continues (as TokenConversation reads it)."""
    return str(messages[-1]["content"]) if messages and messages[-1]["role"] == "assistant" else ""
