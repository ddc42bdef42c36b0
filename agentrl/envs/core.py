"""The environment contract: :class:`Env`, what it receives (:class:`Task`, :class:`Action`) and
what it returns (messages, :class:`StepResult`).

An agentrl environment is Gymnasium's ``Env`` made async and conversational:

* observations are chat messages (``{"role": ..., "content": ...}``), never token ids: the
  rollout runner owns the tokenizer and the chat template;
* ``reset(task)`` starts one episode for one task (one row of a dataset) and returns the
  opening messages; ``step(action)`` takes what the policy said and returns the *new* messages
  only (tool output, a user reply), a reward, ``terminated``/``truncated`` and ``info``;
* one ``Env`` instance serves one episode at a time; the runner makes one per episode and always
  ``await env.close()`` in ``finally``.

Subclass :class:`Env`, override ``reset`` and ``step`` (and ``close`` if you hold resources), and
unit-test it by awaiting ``env.step`` directly or with :class:`agentrl.policies.ScriptedPolicy`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

Message = dict[str, Any]
"""A chat message as chat templates take it: ``{"role": "user", "content": "..."}``."""


def is_message(value: Any) -> bool:
    """Whether ``value`` is a :data:`Message`: a dict with a string ``role`` and string ``content``."""
    return isinstance(value, dict) and isinstance(value.get("role"), str) and isinstance(value.get("content"), str)

FinishReason = Literal["stop", "length", "abort"]
"""Why generation of one turn ended (SGLang's ``finish_reason.type``)."""


@dataclass(frozen=True)
class Task:
    """One row of a dataset, handed to :meth:`Env.reset`.

    Attributes:
        prompt: the task's input (``--input-key``): a string, or a list of chat messages.
        label: the reference answer (``--label-key``), or ``None`` when the dataset has none.
        metadata: anything else the env needs (``--metadata-key``); JSON-serialisable.
        index: position of the row in its dataset (stable across runs; used for grouping and
            for deriving per-sample seeds).
    """

    prompt: str | list[Message]
    label: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True)
class ToolCall:
    """One tool call the policy emitted, as parsed by the runner's tool-call parser.

    A call that failed to parse is still delivered (``name``/``arguments`` may be ``None`` and
    ``error`` says why) so that the env can answer the model with a useful observation instead
    of the call being dropped silently.

    Attributes:
        raw: the exact text of the call as the model wrote it.
        name: the tool name, or ``None`` if it could not be parsed.
        arguments: the parsed arguments, or ``None`` if they could not be parsed.
        error: a human-readable parse error, or ``None`` when the call parsed cleanly.
    """

    raw: str
    name: str | None = None
    arguments: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True)
class Action:
    """What the policy produced in one turn, as the env receives it.

    Attributes:
        text: the decoded text of the sampled tokens (special tokens removed, stop strings kept).
        tool_calls: tool calls parsed from ``text``, malformed ones included (see :class:`ToolCall`).
        finish_reason: why generation stopped: ``"stop"`` (end of turn, stop string or stop
            token), ``"length"`` (the turn hit its token budget) or ``"abort"``.
    """

    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: FinishReason = "stop"


class StepResult(NamedTuple):
    """What :meth:`Env.step` returns; unpacks like Gymnasium's 5-tuple.

    Attributes:
        observation: the new messages to append to the conversation (tool results, user
            replies); empty when the episode ends without anything more to say. A trailing
            assistant message is a prefill: the policy's next turn continues it (its tokens are
            masked) and the next action's text starts with it.
        reward: the reward for this step; the episode's return is the sum over steps.
        terminated: the episode reached a terminal state of the task (answer given, goal
            reached). Do not set it for limits such as max turns: that is ``truncated``.
        truncated: the episode was cut short by a limit outside the task (max turns, time).
        info: JSON-serialisable diagnostics; never used for learning.
    """

    observation: list[Message]
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]


class Seeded:
    """The per-episode random generator both env base classes share: ``self.rng``, reseeded by
    :meth:`seed_rng` (called by ``reset(seed=...)``)."""

    _rng: random.Random | None = None

    def seed_rng(self, seed: int | None) -> None:
        """Reseed when a seed is given; make an unseeded generator on first use otherwise."""
        if seed is not None or self._rng is None:
            self._rng = random.Random(seed)

    @property
    def rng(self) -> random.Random:
        """The episode's random generator, seeded by ``reset(seed=...)``."""
        if self._rng is None:
            self._rng = random.Random()
        return self._rng


class Env(Seeded):
    """Base class of agentrl environments. The docstrings of this class are the contract.

    Override ``reset`` and ``step``; override ``close`` if the env holds resources. Set
    ``tools`` (JSON schemas as chat templates take them) when the env offers function tools;
    the runner passes them to the chat template.

    Randomness: use ``self.rng``, a :class:`random.Random` seeded by ``reset(seed=...)``,
    never the global ``random`` module, so that the same seed gives the same episode.
    """

    metadata: ClassVar[dict[str, Any]] = {}
    tools: list[dict[str, Any]] | None = None

    # ----------------------------------------------------------------- override these
    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Start a new episode for ``task``.

        Args:
            task: the dataset row to solve.
            seed: seeds ``self.rng`` when given; the same task and seed must give the same
                episode for the same actions.

        Returns:
            ``(messages, info)``: the opening conversation (for example a system prompt and the
            user's question) and JSON-serialisable info.

        Subclasses call ``super().reset(task, seed=seed)`` first to seed ``self.rng``.
        """
        self.seed_rng(seed)
        return [], {}

    async def step(self, action: Action) -> StepResult:
        """Apply the policy's action and advance the episode by one turn.

        Args:
            action: what the policy said this turn, with its parsed tool calls.

        Returns:
            A :class:`StepResult`. After a result with ``terminated`` or ``truncated`` set, the
            caller must not call ``step`` again before ``reset``.

        Raises:
            agentrl.errors.EnvError: for infrastructure failures (a tool server down). The runner
                ends only this episode, marks it ``env_error`` and leaves it out of the loss.
                A *model* mistake (bad tool call, unknown tool, a tool that raised on the model's
                input) is not an error: answer it with an observation.
        """
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources. Always called by the runner, also after errors; must be safe to
        call more than once."""

    def example_tasks(self) -> list[Task]:
        """A few tasks :func:`agentrl.envs.check_env` can run the env on without a dataset."""
        return []

    # ----------------------------------------------------------------- machinery
    @property
    def unwrapped(self) -> Env:
        """The innermost env below any wrappers."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
