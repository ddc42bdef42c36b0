"""An agentrl :class:`Env` seen as a real :class:`gymnasium.Env`, for Gymnasium's tools.

Observations and actions are text (:class:`gymnasium.spaces.Text`):

* an observation is the JSON array of the messages that ``reset`` or ``step`` returned, written
  with ``ensure_ascii=True`` so that it stays within the printable-ASCII charset of the space;
* an action is the text the policy said; it becomes ``Action(text=...)``, with the tool calls
  that an optional parser finds in it.

Tasks come from a list given to the adapter: ``reset`` samples one with ``self.np_random`` (so
``reset(seed=...)`` is reproducible), or takes ``options={"task": Task(...)}``. The async env
runs on the adapter's own event loop, so use the adapter from synchronous code (not from inside
a running event loop), and ``close()`` it to close the env and the loop.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, SupportsFloat, TypeVar

import gymnasium
from gymnasium import spaces

from agentrl.envs.core import Action, Env, Message, Task
from agentrl.envs.tool_calls import ToolCallParser
from agentrl.errors import ConfigError, EnvError, EnvStateError

_T = TypeVar("_T")

CHARSET = string.printable
"""Characters of observations and actions: printable ASCII and whitespace."""


class GymnasiumAdapter(gymnasium.Env[str, str]):
    """A :class:`gymnasium.Env` that runs an agentrl :class:`Env`, one episode per ``reset``.

    Attributes:
        env: the agentrl env; the adapter owns it and closes it in :meth:`close`.
        tasks: the tasks ``reset`` samples from.
        max_length: the longest observation and action, in characters.
        observation_space: ``Text`` over :data:`CHARSET` up to ``max_length`` characters.
        action_space: ``Text`` over :data:`CHARSET` up to ``max_length`` characters; ``step``
            accepts any string (policies write non-ASCII text too).
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 - gymnasium.Env declares it so

    def __init__(
        self,
        env: Env,
        tasks: Sequence[Task],
        *,
        tool_call_parser: ToolCallParser | None = None,
        max_length: int = 100_000,
    ) -> None:
        """Args:
            env: the agentrl env to run.
            tasks: the tasks ``reset`` samples from when ``options`` names none; at least one.
            tool_call_parser: turns the action text into tool calls (e.g.
                :func:`agentrl.envs.tool_calls.parse_hermes`); ``None``: no tool calls.
            max_length: the longest observation (its JSON text) and action, in characters.

        Raises:
            ConfigError: ``tasks`` is empty.
        """
        if not tasks:
            raise ConfigError("GymnasiumAdapter needs at least one task in tasks=")
        self.env = env
        self.tasks = list(tasks)
        self.tool_call_parser = tool_call_parser
        self.max_length = max_length
        self.observation_space = spaces.Text(max_length, min_length=0, charset=CHARSET)
        self.action_space = spaces.Text(max_length, min_length=0, charset=CHARSET)
        self._loop = asyncio.new_event_loop()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Start an episode on a task: ``options["task"]`` if given, else one sampled from
        ``tasks`` with ``self.np_random``. The env's own seed is drawn from ``self.np_random``
        too, so the same ``seed`` gives the same episode.

        Returns:
            ``(observation, info)``: the JSON of the opening messages and the env's info.
        """
        super().reset(seed=seed)
        task = (options or {}).get("task")
        if task is None:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        env_seed = int(self.np_random.integers(2**31))
        messages, info = self._run(self.env.reset, task, seed=env_seed)
        return self._observation(messages), dict(info)

    def step(self, action: str) -> tuple[str, SupportsFloat, bool, bool, dict[str, Any]]:
        """Send the policy's text to the env as an :class:`Action`.

        Returns:
            ``(observation, reward, terminated, truncated, info)`` of the env's
            :class:`StepResult`, the observation as JSON text.
        """
        tool_calls = self.tool_call_parser(action) if self.tool_call_parser else ()
        result = self._run(self.env.step, Action(text=action, tool_calls=tool_calls))
        return (
            self._observation(result.observation),
            float(result.reward),
            bool(result.terminated),
            bool(result.truncated),
            dict(result.info),
        )

    def close(self) -> None:
        """Close the env, then the event loop; safe to call more than once."""
        if self._loop.is_closed():
            return
        try:
            self._run(self.env.close)
        finally:
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def _run(self, method: Callable[..., Coroutine[Any, Any, _T]], *args: Any, **kwargs: Any) -> _T:
        """Await ``method(*args, **kwargs)`` on the adapter's loop.

        Raises:
            EnvStateError: the adapter is closed.
        """
        if self._loop.is_closed():
            raise EnvStateError(f"{self.env!r}: the GymnasiumAdapter is closed; make a new one")
        return self._loop.run_until_complete(method(*args, **kwargs))

    def _observation(self, messages: list[Message]) -> str:
        text = json.dumps(messages, ensure_ascii=True)
        if len(text) > self.max_length:
            raise EnvError(
                f"{self.env!r}: observation of {len(text)} characters exceeds the observation "
                f"space's max_length={self.max_length}; pass a larger max_length= "
                "to GymnasiumAdapter or wrap the env in ToolOutputLimit"
            )
        return text
