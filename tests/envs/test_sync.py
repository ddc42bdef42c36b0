"""Tests of agentrl.envs.sync: blocking envs run off the event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from agentrl.envs import Action, Message, StepResult, StepTimeout, SyncEnv, Task, from_sync
from agentrl.errors import EnvError, EnvTimeoutError
from tests.loop_probe import loop_probe

TASK = Task("hi")


class SleepyEnv(SyncEnv):
    """Blocks for ``seconds`` in every step and logs which thread ran each call."""

    tools = [{"type": "function", "function": {"name": "noop"}}]

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.events: list[str] = []
        self.threads: set[int] = set()

    def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        super().reset(task, seed=seed)
        self.threads.add(threading.get_ident())
        return [{"role": "user", "content": task.prompt}], {"draw": self.rng.random()}

    def step(self, action: Action) -> StepResult:
        self.threads.add(threading.get_ident())
        self.events.append("step started")
        time.sleep(self.seconds)
        if action.text == "fail":
            raise EnvError("tool server down")
        self.events.append("step finished")
        return StepResult([{"role": "tool", "content": action.text}], 1.0, True, False, {})

    def close(self) -> None:
        self.threads.add(threading.get_ident())
        self.events.append("closed")

    def example_tasks(self) -> list[Task]:
        return [TASK]


async def test_calls_run_off_the_event_loop_thread() -> None:
    sync_env = SleepyEnv()
    env = from_sync(sync_env)
    messages, _ = await env.reset(TASK, seed=7)
    result = await env.step(Action("ls"))
    await env.close()
    assert messages == [{"role": "user", "content": "hi"}]
    assert result == StepResult([{"role": "tool", "content": "ls"}], 1.0, True, False, {})
    assert sync_env.threads and threading.get_ident() not in sync_env.threads
    assert env.tools == SleepyEnv.tools and env.example_tasks() == [TASK]
    assert repr(env) == "<from_sync<SleepyEnv>>"


async def test_the_event_loop_stays_responsive_while_a_step_blocks() -> None:
    env = from_sync(SleepyEnv(seconds=0.3))
    await env.reset(TASK)
    async with loop_probe() as probe:
        await env.step(Action("x"))
    assert probe.ticks >= 10  # about 30 if the loop never blocked, 0 or 1 if it did


async def test_a_given_executor_bounds_concurrent_calls() -> None:
    with ThreadPoolExecutor(max_workers=1) as executor:
        envs = [from_sync(SleepyEnv(seconds=0.1), executor) for _ in range(3)]
        await asyncio.gather(*(env.reset(TASK) for env in envs))
        started = time.perf_counter()
        await asyncio.gather(*(env.step(Action("x")) for env in envs))
        assert time.perf_counter() - started >= 0.3  # one at a time


async def test_seeded_reset_is_reproducible() -> None:
    env = from_sync(SleepyEnv())
    draws = [(await env.reset(TASK, seed=seed))[1]["draw"] for seed in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2]


async def test_errors_of_the_sync_env_reach_the_caller() -> None:
    env = from_sync(SleepyEnv())
    await env.reset(TASK)
    with pytest.raises(EnvError, match="tool server down"):
        await env.step(Action("fail"))


async def test_close_waits_for_a_step_abandoned_by_a_timeout() -> None:
    sync_env = SleepyEnv(seconds=0.2)
    env = StepTimeout(from_sync(sync_env), 0.02)
    await env.reset(TASK)
    with pytest.raises(EnvTimeoutError):
        await env.step(Action("x"))
    assert sync_env.events == ["step started"]  # still running in its thread
    await env.close()
    assert sync_env.events == ["step started", "step finished", "closed"]


async def test_sync_env_base_defaults() -> None:
    class Bare(SyncEnv):
        pass

    env = from_sync(Bare())
    assert await env.reset(TASK) == ([], {})
    with pytest.raises(NotImplementedError):
        await env.step(Action("x"))
    await env.close()
    await env.close()
    assert env.tools is None and env.example_tasks() == []
