"""Tests of agentrl.envs.wrappers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

from agentrl.envs import (
    Action,
    Env,
    EpisodeStatistics,
    EpisodeTimeout,
    MaxTurns,
    OrderEnforcing,
    StepResult,
    StepTimeout,
    Task,
    ToolOutputLimit,
    Wrapper,
)
from agentrl.envs.wrappers import Tokenizer
from agentrl.errors import ConfigError, EnvStateError, EnvTimeoutError
from tests.envs.testing_env import GenericTestEnv, Opening, StepFunc

TASK = Task("hi")


def terminating_at(turn: int) -> StepFunc:
    def step(env: GenericTestEnv, action: Action) -> StepResult:
        observation = [{"role": "user", "content": "ok"}]
        return StepResult(observation, 1.0, env.turns == turn, False, {"k": env.turns})

    return step


def sleeping(seconds: float) -> StepFunc:
    async def step(env: GenericTestEnv, action: Action) -> StepResult:
        await asyncio.sleep(seconds)
        return StepResult([], 0.0, False, False, {})

    return step


async def test_wrapper_forwards_everything() -> None:
    inner = GenericTestEnv(tools=[{"type": "function"}])
    env = Wrapper(Wrapper(inner))
    assert env.unwrapped is inner and env.tools == [{"type": "function"}]
    assert env.example_tasks() == inner.example_tasks()
    assert (await env.reset(TASK, seed=3)) == ([{"role": "user", "content": "hi"}], {"seed": 3})
    assert (await env.step(Action("done"))).terminated
    await env.close()
    assert inner.close_calls == 1
    assert repr(env) == "<Wrapper<Wrapper<GenericTestEnv>>>"


@pytest.mark.parametrize(
    ("max_turns", "terminates_at", "last"),
    [
        (3, None, (False, True, "max_turns")),
        (3, 3, (True, False, None)),
        (1, None, (False, True, "max_turns")),
    ],
)
async def test_max_turns_truncates_unless_the_env_terminated(
    max_turns: int, terminates_at: int | None, last: tuple[bool, bool, str | None]
) -> None:
    env = MaxTurns(GenericTestEnv(step_func=terminating_at(terminates_at or -1)), max_turns)
    for _ in range(2):  # a second episode checks that reset restarts the count
        await env.reset(TASK)
        results = [await env.step(Action("x")) for _ in range(max_turns)]
        assert not any(r.terminated or r.truncated for r in results[:-1])
        final = results[-1]
        assert (final.terminated, final.truncated, final.info.get("truncated_by")) == last
        assert final.info["k"] == max_turns


async def test_max_turns_keeps_the_envs_own_truncation() -> None:
    def truncating(env: GenericTestEnv, action: Action) -> StepResult:
        return StepResult([], 0.0, False, True, {"truncated_by": "context"})

    env = MaxTurns(GenericTestEnv(step_func=truncating), 1)
    await env.reset(TASK)
    assert (await env.step(Action("x"))).info == {"truncated_by": "context"}


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda env: MaxTurns(env, 0), "max_turns must be an int >= 1, got 0"),
        (lambda env: MaxTurns(env, 2.0), "max_turns must be an int >= 1, got 2.0"),  # type: ignore[arg-type]
        (lambda env: MaxTurns(env, True), "max_turns must be an int >= 1, got True"),
        (lambda env: StepTimeout(env, 0), "StepTimeout seconds must be a number > 0, got 0"),
        (lambda env: EpisodeTimeout(env, -1.5), "EpisodeTimeout seconds must be a number > 0, got -1.5"),
        (lambda env: ToolOutputLimit(env, 0, tokenizer=None), "max_tokens must be an int >= 1, got 0"),  # type: ignore[arg-type]
    ],
)
def test_wrapper_arguments_are_validated(make: Callable[[Env], Env], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make(GenericTestEnv())
    assert fragment in str(caught.value)


async def test_order_enforcing() -> None:
    inner = GenericTestEnv()
    env = OrderEnforcing(inner)
    with pytest.raises(EnvStateError, match=r"<GenericTestEnv>: step\(\) called before reset\(\)"):
        await env.step(Action("x"))
    await env.reset(TASK)
    assert not (await env.step(Action("x"))).terminated
    assert (await env.step(Action("done"))).terminated
    with pytest.raises(EnvStateError, match=r"step\(\) called after the episode ended"):
        await env.step(Action("x"))
    await env.reset(TASK)
    assert (await env.step(Action("done"))).terminated
    await env.close()
    await env.close()
    assert inner.close_calls == 2


async def test_step_timeout() -> None:
    env = StepTimeout(GenericTestEnv(step_func=sleeping(5.0)), 0.05)
    await env.reset(TASK)
    started = time.perf_counter()
    with pytest.raises(EnvTimeoutError, match=r"<GenericTestEnv>: step\(\) exceeded the StepTimeout of 0.05s"):
        await env.step(Action("x"))
    assert time.perf_counter() - started < 1.0
    fast = StepTimeout(GenericTestEnv(step_func=sleeping(0.0)), 0.5)
    await fast.reset(TASK)
    assert (await fast.step(Action("x"))).reward == 0.0


async def test_step_timeout_passes_the_envs_own_timeout_error_through() -> None:
    def raising(env: GenericTestEnv, action: Action) -> StepResult:
        raise TimeoutError("the env's own")

    env = StepTimeout(GenericTestEnv(step_func=raising), 1.0)
    await env.reset(TASK)
    with pytest.raises(TimeoutError, match="the env's own") as caught:
        await env.step(Action("x"))
    assert not isinstance(caught.value, EnvTimeoutError)


async def test_episode_timeout_counts_from_reset() -> None:
    env = EpisodeTimeout(GenericTestEnv(step_func=sleeping(0.06)), 0.1)
    await env.reset(TASK)
    await env.step(Action("x"))  # 0.06s of 0.1s
    with pytest.raises(EnvTimeoutError, match="exceeded the EpisodeTimeout of 0.1s"):
        await env.step(Action("x"))  # runs out mid-step
    await env.reset(TASK)  # a new episode has the whole limit again
    await env.step(Action("x"))


async def test_episode_timeout_refuses_a_step_after_the_deadline() -> None:
    env = EpisodeTimeout(GenericTestEnv(), 0.05)  # the default step never suspends
    await env.reset(TASK)
    await asyncio.sleep(0.06)
    with pytest.raises(EnvTimeoutError, match="EpisodeTimeout of 0.05s"):
        await env.step(Action("x"))


async def test_episode_timeout_bounds_reset() -> None:
    async def slow_reset(env: GenericTestEnv, task: Task, seed: int | None) -> Opening:
        await asyncio.sleep(5.0)
        return [], {}

    env = EpisodeTimeout(GenericTestEnv(reset_func=slow_reset), 0.05)
    with pytest.raises(EnvTimeoutError, match="EpisodeTimeout of 0.05s"):
        await env.reset(TASK)


def replying(*contents: object) -> StepFunc:
    def step(env: GenericTestEnv, action: Action) -> StepResult:
        observation = [{"role": "tool", "content": c, "name": "t"} for c in contents]
        return StepResult(observation, 0.0, False, False, {})

    return step


async def test_tool_output_limit_cuts_in_tokens_with_a_marker(tokenizer: Tokenizer) -> None:
    long = " ".join(f"word{i}" for i in range(200))
    short = "short output"
    parts = [{"type": "text", "text": long}]
    env = ToolOutputLimit(GenericTestEnv(step_func=replying(long, short, parts)), 16, tokenizer)
    opening, _ = await env.reset(Task(long))
    assert opening[0]["content"] == long  # reset passes unchanged
    cut, kept, multimodal = (await env.step(Action("x"))).observation
    n_long = len(tokenizer.encode(long, add_special_tokens=False))
    head, marker = cut["content"].split("\n[... truncated ")
    assert marker == f"{n_long - 16} tokens]"
    assert head == tokenizer.decode(tokenizer.encode(long, add_special_tokens=False)[:16])
    assert long.startswith(head) and cut["role"] == "tool" and cut["name"] == "t"
    assert kept == {"role": "tool", "content": short, "name": "t"}
    assert multimodal["content"] is parts


async def test_tool_output_limit_drops_a_character_split_by_the_cut(tokenizer: Tokenizer) -> None:
    text = "世界" * 20
    ids = tokenizer.encode(text, add_special_tokens=False)
    cut_inside_char = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    env = ToolOutputLimit(GenericTestEnv(step_func=replying(text)), cut_inside_char, tokenizer)
    await env.reset(TASK)
    (message,) = (await env.step(Action("x"))).observation
    head = message["content"].split("\n[... truncated")[0]
    assert "\ufffd" not in head and text.startswith(head)


async def test_episode_statistics_on_the_final_step_only() -> None:
    async def step(env: GenericTestEnv, action: Action) -> StepResult:
        await asyncio.sleep(0.02)
        return StepResult([], 0.25 * env.turns, env.turns == 3, False, {"turn": env.turns})

    env = EpisodeStatistics(GenericTestEnv(step_func=step))
    for _ in range(2):  # the second episode starts from zero
        await env.reset(TASK)
        results = [await env.step(Action("x")) for _ in range(3)]
        assert all("episode" not in r.info for r in results[:2])
        episode = json.loads(json.dumps(results[-1].info["episode"]))
        assert episode["return"] == 1.5 and episode["turns"] == 3
        assert 0.06 <= episode["time_s"] < 1.0
        assert results[-1].info["turn"] == 3


async def test_episode_statistics_sees_truncation_by_max_turns() -> None:
    env = EpisodeStatistics(MaxTurns(GenericTestEnv(), 2))
    await env.reset(TASK)
    await env.step(Action("x"))
    last = await env.step(Action("x"))
    assert last.truncated and last.info["episode"]["turns"] == 2 and last.info["episode"]["return"] == 2.0
