"""A configurable env for tests, like Gymnasium's ``GenericTestEnv``: pass the ``reset`` and
``step`` behaviour as callables (plain or async) instead of writing a class per test."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from agentrl.envs import Action, Env, Message, StepResult, Task

Opening = tuple[list[Message], dict[str, Any]]
ResetFunc = Callable[["GenericTestEnv", Task, "int | None"], "Opening | Awaitable[Opening]"]
StepFunc = Callable[["GenericTestEnv", Action], "StepResult | Awaitable[StepResult]"]


def basic_reset(env: GenericTestEnv, task: Task, seed: int | None) -> Opening:
    """Opens with the task's prompt as one user message."""
    return [{"role": "user", "content": task.prompt}], {"seed": seed}


def basic_step(env: GenericTestEnv, action: Action) -> StepResult:
    """Reward 1 per step; terminates when the action text is ``"done"``; echoes the turn."""
    observation = [{"role": "user", "content": f"turn {env.turns}"}]
    return StepResult(observation, 1.0, action.text == "done", False, {})


class GenericTestEnv(Env):
    """An env whose ``reset`` and ``step`` are the given callables (called with the env first).

    Attributes:
        turns: steps since the last reset (counted before ``step_func`` runs).
        close_calls: how many times ``close`` was called.
        events: a log tests may append to, to check the order of calls.
    """

    def __init__(
        self,
        reset_func: ResetFunc = basic_reset,
        step_func: StepFunc = basic_step,
        tools: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.reset_func = reset_func
        self.step_func = step_func
        self.tools = tools
        self.kwargs = kwargs  # what make() passed, for registry tests
        self.turns = 0
        self.close_calls = 0
        self.events: list[str] = []

    async def reset(self, task: Task, *, seed: int | None = None) -> Opening:
        await super().reset(task, seed=seed)
        self.turns = 0
        result = self.reset_func(self, task, seed)
        return await result if inspect.isawaitable(result) else result

    async def step(self, action: Action) -> StepResult:
        self.turns += 1
        result = self.step_func(self, action)
        return await result if inspect.isawaitable(result) else result

    async def close(self) -> None:
        self.close_calls += 1

    def example_tasks(self) -> list[Task]:
        return [Task(prompt="say done")]
