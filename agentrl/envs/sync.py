"""Blocking environments: :class:`SyncEnv` and :func:`from_sync`, which turns one into an
:class:`Env` whose every call runs in a bounded thread pool, never on the event loop.

Write a :class:`SyncEnv` when the env's work is blocking (a subprocess, a blocking HTTP client,
a simulator without async support)::

    class Shell(SyncEnv):
        def reset(self, task, *, seed=None):
            super().reset(task, seed=seed)
            return [{"role": "user", "content": task.prompt}], {}

        def step(self, action):
            out = subprocess.run(action.text, shell=True, capture_output=True, text=True)
            return StepResult([{"role": "tool", "content": out.stdout}], 0.0, False, False, {})

    env = from_sync(Shell())  # an async Env, ready for the rollout runner
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, ClassVar, TypeVar

from agentrl.envs.core import Action, Env, Message, Seeded, StepResult, Task

_T = TypeVar("_T")


class SyncEnv(Seeded):
    """Base class of blocking environments: :class:`Env`'s contract with plain methods.

    Override ``reset`` and ``step`` (and ``close`` if the env holds resources); everything said
    in :class:`Env`'s docstrings holds here. Calls of one instance never overlap: the adapter
    starts a call only after the previous one returned, also when the awaiting task was
    cancelled (a timeout), so the env needs no locking.
    """

    metadata: ClassVar[dict[str, Any]] = {}
    tools: list[dict[str, Any]] | None = None

    # ----------------------------------------------------------------- override these
    def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Start a new episode for ``task``; see :meth:`Env.reset`.

        Subclasses call ``super().reset(task, seed=seed)`` first to seed ``self.rng``.
        """
        self.seed_rng(seed)
        return [], {}

    def step(self, action: Action) -> StepResult:
        """Apply the policy's action; see :meth:`Env.step`."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources; must be safe to call more than once. See :meth:`Env.close`."""

    def example_tasks(self) -> list[Task]:
        """A few tasks to check the env with; see :meth:`Env.example_tasks`."""
        return []

    # ----------------------------------------------------------------- machinery
    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class SyncEnvAdapter(Env):
    """An :class:`Env` that runs each call of a :class:`SyncEnv` in an executor; made by
    :func:`from_sync`.

    Attributes:
        sync_env: the blocking env.
        executor: where calls run; ``None`` is the event loop's default executor.
    """

    def __init__(self, sync_env: SyncEnv, executor: Executor | None = None) -> None:
        self.sync_env = sync_env
        self.executor = executor
        self._last_call: asyncio.Future[Any] | None = None

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        """Run ``sync_env.reset`` in the executor."""
        return await self._run(functools.partial(self.sync_env.reset, task, seed=seed))

    async def step(self, action: Action) -> StepResult:
        """Run ``sync_env.step`` in the executor."""
        return await self._run(functools.partial(self.sync_env.step, action))

    async def close(self) -> None:
        """Run ``sync_env.close`` in the executor, after any call still running there."""
        await self._run(self.sync_env.close)

    def example_tasks(self) -> list[Task]:
        """The sync env's example tasks."""
        return self.sync_env.example_tasks()

    @property
    def tools(self) -> list[dict[str, Any]] | None:  # type: ignore[override]
        """The sync env's tool schemas."""
        return self.sync_env.tools

    def __repr__(self) -> str:
        return f"<from_sync{self.sync_env!r}>"

    async def _run(self, call: Callable[[], _T]) -> _T:
        """Run ``call`` in the executor once the previous call has finished.

        A call whose awaiting task is cancelled keeps running in its thread (threads cannot be
        interrupted); ``shield`` keeps its future alive so the next call can wait for it.
        """
        if self._last_call is not None and not self._last_call.done():
            await asyncio.wait([self._last_call])
        future = asyncio.get_running_loop().run_in_executor(self.executor, call)
        self._last_call = future
        return await asyncio.shield(future)


def from_sync(sync_env: SyncEnv, executor: Executor | None = None) -> Env:
    """Wrap a blocking env as an async :class:`Env`.

    Args:
        sync_env: the blocking env.
        executor: the executor its calls run in, which bounds how many blocking calls run at
            once. ``None`` uses the running loop's default executor (a thread pool of
            ``min(32, cpu_count + 4)`` threads); pass your own
            :class:`~concurrent.futures.ThreadPoolExecutor` to size it from config, and shut it
            down yourself.

    Returns:
        An :class:`Env` whose ``reset``, ``step`` and ``close`` never block the event loop.
    """
    return SyncEnvAdapter(sync_env, executor)
