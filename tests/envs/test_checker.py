"""check_env passes the built-in envs and fails deliberately broken ones with a clear message."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentrl.envs import Action, EnvCheckError, MaxTurns, OrderEnforcing, StepResult, Task, check_env, make
from tests.rollout.tag_env import TagSearchEnv
from tests.rollout.test_conversation import STRIP_THINK_TEMPLATE


def tag_env():
    return OrderEnforcing(MaxTurns(TagSearchEnv(), 4))


async def test_builtin_math_env_passes_with_template_conformance(tokenizer):
    report = await check_env(lambda: make("agentrl/Math-v0"), tokenizer=tokenizer)
    assert report.ok and len(report.results) == 11
    assert "PASSED" in str(report)


async def test_multi_turn_tag_env_passes_and_its_stitched_ids_equal_a_full_render(tokenizer):
    report = await check_env(tag_env, tokenizer=tokenizer)
    assert report.ok
    assert report.results[-1].detail == "stitched token ids equal a full render"


async def test_a_template_that_is_not_append_only_is_reported_not_failed(tokenizer):
    actions = [Action("<think>hm</think><search>capital of France</search>"), Action("<answer>Paris</answer>")]
    report = await check_env(tag_env, tokenizer=tokenizer, chat_template=STRIP_THINK_TEMPLATE, actions=actions)
    assert report.ok and "not append-only" in report.results[-1].detail


class SharedStateEnv(TagSearchEnv):
    history: list[str] = []  # shared by every instance: the bug

    async def step(self, action):
        self.history.append(action.text)
        result = await super().step(action)
        return result._replace(reward=float(len(self.history)))


class UnseededEnv(TagSearchEnv):
    async def step(self, action):
        import random

        result = await super().step(action)
        return result._replace(reward=random.random())


class NonJsonInfoEnv(TagSearchEnv):
    async def step(self, action):
        result = await super().step(action)
        return result._replace(info={"when": object()})


class CrashesOnBadToolCallEnv(TagSearchEnv):
    async def step(self, action):
        for call in action.tool_calls:
            if call.error:
                raise ValueError(call.error)
        return await super().step(action)


class BlockingEnv(TagSearchEnv):
    async def step(self, action):
        time.sleep(0.4)
        return await super().step(action)


class SwallowsCancellationEnv(TagSearchEnv):
    async def step(self, action):
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
        return await super().step(action)


class WrongTypesEnv(TagSearchEnv):
    async def step(self, action):
        return StepResult("text", "1", 0, False, {})


class NeverEndsEnv(TagSearchEnv):
    async def step(self, action):
        return StepResult([{"role": "user", "content": "go on"}], 0.0, False, False, {})


@pytest.mark.parametrize(
    ("env_factory", "check", "fragment"),
    [
        (lambda: OrderEnforcing(MaxTurns(SharedStateEnv(), 4)), "parallel instances share no state", "instances share state"),
        (lambda: OrderEnforcing(MaxTurns(UnseededEnv(), 4)), "same seed gives the same episode", "draw randomness from self.rng"),
        (lambda: OrderEnforcing(MaxTurns(NonJsonInfoEnv(), 4)), "step returns StepResult with JSON-serialisable info", "info is not JSON-serialisable"),
        (lambda: OrderEnforcing(MaxTurns(CrashesOnBadToolCallEnv(), 4)), "malformed and unknown tool calls become observations", "raised ValueError: tool call is not valid JSON"),
        (lambda: OrderEnforcing(MaxTurns(BlockingEnv(), 2)), "env calls do not block the event loop", "the event loop stalled"),
        (lambda: OrderEnforcing(MaxTurns(SwallowsCancellationEnv(), 4)), "step timeouts trip", "swallows asyncio.CancelledError"),
        (lambda: OrderEnforcing(MaxTurns(WrongTypesEnv(), 4)), "step returns StepResult with JSON-serialisable info", "returned observation of type str"),
        (lambda: OrderEnforcing(NeverEndsEnv()), "episode ends within max_steps", "did not end in 16 steps"),
        (lambda: MaxTurns(TagSearchEnv(), 4), "step after the end raises EnvStateError", "returned normally"),
    ],
)
async def test_broken_envs_fail_the_check_that_names_the_cause(env_factory, check, fragment):
    with pytest.raises(EnvCheckError) as excinfo:
        await check_env(env_factory)
    report = str(excinfo.value)
    failed = [line for line in report.splitlines() if line.strip().startswith("FAIL")]
    assert any(check in line and fragment in line for line in failed), report


async def test_an_env_without_tasks_is_told_how_to_provide_them():
    class NoTasks(TagSearchEnv):
        def example_tasks(self):
            return []

    report = await check_env(NoTasks, raise_on_failure=False)
    assert not report.ok and "pass tasks=... or implement Env.example_tasks()" in str(report)


async def test_explicit_tasks_are_used():
    report = await check_env(tag_env, tasks=[Task("Capital of Peru?", "Lima")])
    assert report.ok
