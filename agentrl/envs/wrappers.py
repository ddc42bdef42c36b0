"""Wrappers: envs that hold another env and change one aspect of it.

A :class:`Wrapper` forwards everything to the env it holds; a subclass overrides only what it
changes. Wrappers stack: ``EpisodeStatistics(MaxTurns(env, 8))``. :func:`agentrl.envs.make`
applies :class:`MaxTurns` (when the spec sets ``max_turns``) and then :class:`OrderEnforcing`
outermost, so the guard sees the truncation that ``MaxTurns`` adds.

Limits are reported the way Gymnasium reports them: a turn limit *truncates* the episode (it is
not a terminal state of the task), while a wall-clock limit raises :class:`EnvTimeoutError`,
which the rollout runner records as a ``timeout`` termination.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from agentrl.envs.core import Action, Env, Message, StepResult, Task
from agentrl.errors import ConfigError, EnvStateError, EnvTimeoutError

_T = TypeVar("_T")


class Wrapper(Env):
    """Base class of wrappers: forwards ``reset``, ``step``, ``close``, ``tools`` and
    ``example_tasks`` to the wrapped env, and ``unwrapped`` to the innermost one.

    Attributes:
        env: the wrapped env (possibly itself a wrapper).
    """

    def __init__(self, env: Env) -> None:
        self.env = env

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Reset the wrapped env; see :meth:`Env.reset`."""
        return await self.env.reset(task, seed=seed)

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env; see :meth:`Env.step`."""
        return await self.env.step(action)

    async def close(self) -> None:
        """Close the wrapped env; see :meth:`Env.close`."""
        await self.env.close()

    def example_tasks(self) -> list[Task]:
        """The wrapped env's example tasks."""
        return self.env.example_tasks()

    @property
    def tools(self) -> list[dict[str, Any]] | None:
        """The wrapped env's tool schemas."""
        return self.env.tools

    @tools.setter
    def tools(self, value: list[dict[str, Any]] | None) -> None:
        self.env.tools = value

    @property
    def unwrapped(self) -> Env:
        """The innermost env below every wrapper."""
        return self.env.unwrapped

    def __repr__(self) -> str:
        return f"<{type(self).__name__}{self.env!r}>"


class OrderEnforcing(Wrapper):
    """Raises :class:`EnvStateError` when ``step`` is called before ``reset`` or after the
    episode ended (a result with ``terminated`` or ``truncated``), like Gymnasium's wrapper of
    the same name. ``close`` is never refused, also not a second time."""

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._has_reset = False
        self._episode_over = False

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Reset the wrapped env and allow ``step`` again."""
        result = await self.env.reset(task, seed=seed)
        self._has_reset, self._episode_over = True, False
        return result

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env.

        Raises:
            EnvStateError: ``reset`` was not called yet, or the episode already ended.
        """
        if not self._has_reset:
            raise EnvStateError(
                f"{self.unwrapped!r}: step() called before reset(); await env.reset(task) first"
            )
        if self._episode_over:
            raise EnvStateError(
                f"{self.unwrapped!r}: step() called after the episode ended (a step returned "
                "terminated or truncated); await env.reset(task) to start a new episode"
            )
        result = await self.env.step(action)
        self._episode_over = result.terminated or result.truncated
        return result


class MaxTurns(Wrapper):
    """Truncates the episode after ``max_turns`` steps.

    The step that reaches the limit is returned with ``truncated=True`` and
    ``info["truncated_by"] = "max_turns"``, unless the env itself ended the episode on that step
    (``terminated`` or ``truncated`` already set), in which case the result is left as it is.
    The limit is never reported as ``terminated``: the task was not finished, only cut short.
    """

    def __init__(self, env: Env, max_turns: int) -> None:
        """Args:
            env: the env to limit.
            max_turns: steps allowed per episode, at least 1.

        Raises:
            ConfigError: ``max_turns`` is not a positive int.
        """
        super().__init__(env)
        if isinstance(max_turns, bool) or not isinstance(max_turns, int) or max_turns < 1:
            raise ConfigError(f"max_turns must be an int >= 1, got {max_turns!r}")
        self.max_turns = max_turns
        self._turns = 0

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Reset the wrapped env and the turn count."""
        self._turns = 0
        return await self.env.reset(task, seed=seed)

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env; truncate the result when it is turn ``max_turns``."""
        result = await self.env.step(action)
        self._turns += 1
        if self._turns >= self.max_turns and not (result.terminated or result.truncated):
            result = result._replace(truncated=True, info={**result.info, "truncated_by": "max_turns"})
        return result


class StepTimeout(Wrapper):
    """Bounds each ``step`` by ``seconds`` of wall-clock time.

    A step that runs over is cancelled and :class:`EnvTimeoutError` is raised; the episode is
    then over (the env may be mid-step), and the caller closes the env.
    """

    def __init__(self, env: Env, seconds: float) -> None:
        """Args:
            env: the env to bound.
            seconds: the limit per step, > 0.

        Raises:
            ConfigError: ``seconds`` is not positive.
        """
        super().__init__(env)
        self.seconds = _positive_seconds("StepTimeout", seconds)

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env within the limit.

        Raises:
            EnvTimeoutError: the step took longer than ``seconds``.
        """
        deadline = asyncio.get_running_loop().time() + self.seconds
        message = f"{self.unwrapped!r}: step() exceeded the StepTimeout of {self.seconds:g}s"
        return await _before_deadline(deadline, self.env.step(action), message)


class EpisodeTimeout(Wrapper):
    """Bounds a whole episode, from the start of ``reset`` to the end of its last ``step``, by
    ``seconds`` of wall-clock time.

    The call that runs over (``reset`` or ``step``) is cancelled, and any call after the
    deadline fails at once; both raise :class:`EnvTimeoutError`.
    """

    def __init__(self, env: Env, seconds: float) -> None:
        """Args:
            env: the env to bound.
            seconds: the limit per episode, > 0.

        Raises:
            ConfigError: ``seconds`` is not positive.
        """
        super().__init__(env)
        self.seconds = _positive_seconds("EpisodeTimeout", seconds)
        self._deadline: float | None = None

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Start the episode clock and reset the wrapped env within the limit.

        Raises:
            EnvTimeoutError: ``reset`` alone took longer than ``seconds``.
        """
        self._deadline = asyncio.get_running_loop().time() + self.seconds
        return await _before_deadline(self._deadline, self.env.reset(task, seed=seed), self._message())

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env within what is left of the episode's time.

        Raises:
            EnvTimeoutError: the episode's time ran out before or during this step.
        """
        if self._deadline is None:
            return await self.env.step(action)
        if asyncio.get_running_loop().time() >= self._deadline:
            raise EnvTimeoutError(self._message())
        return await _before_deadline(self._deadline, self.env.step(action), self._message())

    def _message(self) -> str:
        return f"{self.unwrapped!r}: the episode exceeded the EpisodeTimeout of {self.seconds:g}s"


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer that :class:`ToolOutputLimit` uses."""

    def encode(self, text: str, *, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, token_ids: list[int]) -> str: ...


class ToolOutputLimit(Wrapper):
    """Cuts the content of each observation message of ``step`` to ``max_tokens`` tokens.

    Tokens are counted with ``tokenizer.encode(content, add_special_tokens=False)``. A message
    over the limit keeps the decoded text of its first ``max_tokens`` tokens (a character split
    across the cut is dropped whole), followed by a visible marker
    ``"\\n[... truncated N tokens]"`` where N is the number of tokens cut. Messages whose content
    is not a string (multimodal parts) pass unchanged, and so do the messages of ``reset``.
    """

    def __init__(self, env: Env, max_tokens: int, tokenizer: Tokenizer) -> None:
        """Args:
            env: the env whose observations to cut.
            max_tokens: tokens kept per message, at least 1.
            tokenizer: the policy's tokenizer.

        Raises:
            ConfigError: ``max_tokens`` is not a positive int.
        """
        super().__init__(env)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env and cut each message of its observation."""
        result = await self.env.step(action)
        return result._replace(observation=[self._cut(message) for message in result.observation])

    def _cut(self, message: Message) -> Message:
        content = message.get("content")
        if not isinstance(content, str):
            return message
        return {**message, "content": truncate_tokens(content, self.max_tokens, self.tokenizer)}


def truncate_tokens(text: str, max_tokens: int, tokenizer: Tokenizer) -> str:
    """``text`` cut to ``max_tokens`` tokens with a visible marker, as :class:`ToolOutputLimit`
    cuts (unchanged when it fits)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) <= max_tokens:
        return text
    kept = tokenizer.decode(ids[:max_tokens]).rstrip("\ufffd")
    return kept + f"\n[... truncated {len(ids) - max_tokens} tokens]"


class EpisodeStatistics(Wrapper):
    """Adds ``info["episode"] = {"return", "turns", "time_s"}`` to the step that ends the
    episode (``terminated`` or ``truncated``).

    ``return`` is the sum of the episode's rewards (float), ``turns`` the number of steps (int)
    and ``time_s`` the wall-clock seconds from the start of ``reset`` to the end of the last
    step (float).
    """

    def __init__(self, env: Env) -> None:
        super().__init__(env)
        self._return = 0.0
        self._turns = 0
        self._started = time.perf_counter()

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Reset the wrapped env and the statistics."""
        self._return, self._turns, self._started = 0.0, 0, time.perf_counter()
        return await self.env.reset(task, seed=seed)

    async def step(self, action: Action) -> StepResult:
        """Step the wrapped env; add the statistics when the episode ends."""
        result = await self.env.step(action)
        self._return += float(result.reward)
        self._turns += 1
        if not (result.terminated or result.truncated):
            return result
        elapsed = time.perf_counter() - self._started
        episode = {"return": self._return, "turns": self._turns, "time_s": elapsed}
        return result._replace(info={**result.info, "episode": episode})


def _positive_seconds(wrapper: str, seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigError(f"{wrapper} seconds must be a number > 0, got {seconds!r}")
    return float(seconds)


async def _before_deadline(deadline: float, call: Awaitable[_T], message: str) -> _T:
    """Await ``call``, cancelling it at ``deadline`` (event-loop time) with ``EnvTimeoutError``.

    A ``TimeoutError`` that ``call`` raises by itself passes through unchanged.
    """
    try:
        async with asyncio.timeout_at(deadline) as scope:
            return await call
    except TimeoutError as e:
        if not scope.expired():
            raise
        raise EnvTimeoutError(message) from e
