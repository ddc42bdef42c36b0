"""Tests of agentrl.envs.gymnasium_adapter: an agentrl Env as a real gymnasium.Env."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gymnasium.utils.env_checker import check_env

from agentrl.envs import Action, GymnasiumAdapter, Message, StepResult, SyncEnv, Task, ToolCall, from_sync
from agentrl.envs.tool_calls import parse_hermes
from agentrl.errors import ConfigError, EnvError, EnvStateError
from tests.envs.testing_env import GenericTestEnv

TASKS = [Task("first"), Task("second"), Task("third"), Task("fourth")]


def seeded_reset(env: GenericTestEnv, task: Task, seed: int | None) -> tuple[list[Message], dict[str, Any]]:
    """Opening messages that depend on the env's seed, as a real env's would."""
    return [{"role": "user", "content": f"{task.prompt} #{env.rng.randint(0, 10**6)}"}], {"seed": seed}


def recording_step(env: GenericTestEnv, action: Action) -> StepResult:
    env.events.append(repr(action))
    reward = float(len(action.text) % 3)
    observation = [{"role": "user", "content": f"got {len(action.text)} chars"}]
    return StepResult(observation, reward, action.text == "done", False, {"turn": env.turns})


@pytest.fixture
def inner() -> GenericTestEnv:
    return GenericTestEnv(reset_func=seeded_reset, step_func=recording_step)


@pytest.fixture
def adapter(inner: GenericTestEnv) -> Iterator[GymnasiumAdapter]:
    adapter = GymnasiumAdapter(inner, TASKS)
    yield adapter
    adapter.close()


def test_passes_gymnasiums_env_checker(adapter: GymnasiumAdapter) -> None:
    check_env(adapter, skip_render_check=True)


def test_observations_are_ascii_json_of_the_new_messages(inner: GenericTestEnv) -> None:
    adapter = GymnasiumAdapter(inner, [Task("héllo 世界")])
    try:
        observation, info = adapter.reset(seed=0)
        assert observation.isascii() and "\\u00e9" in observation and observation in adapter.observation_space
        (message,) = json.loads(observation)
        assert message["content"].startswith("héllo 世界 #") and isinstance(info["seed"], int)
        observation, reward, terminated, truncated, info = adapter.step("héllo")
        assert json.loads(observation) == [{"role": "user", "content": "got 5 chars"}]
        assert (reward, terminated, truncated, info) == (2.0, False, False, {"turn": 1})
    finally:
        adapter.close()


def test_seeded_reset_samples_tasks_reproducibly(adapter: GymnasiumAdapter) -> None:
    first = [adapter.reset(seed=seed)[0] for seed in range(8)]
    again = [adapter.reset(seed=seed)[0] for seed in range(8)]
    assert first == again
    prompts = {json.loads(o)[0]["content"].split(" #")[0] for o in first}
    assert len(prompts) > 1 and prompts <= {t.prompt for t in TASKS}


def test_options_choose_the_task(adapter: GymnasiumAdapter) -> None:
    observation, _ = adapter.reset(seed=1, options={"task": Task("chosen")})
    assert json.loads(observation)[0]["content"].startswith("chosen #")


def test_actions_carry_parsed_tool_calls(inner: GenericTestEnv) -> None:
    text = '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>'
    adapter = GymnasiumAdapter(inner, TASKS, tool_call_parser=parse_hermes)
    try:
        adapter.reset(seed=0)
        adapter.step(text)
    finally:
        adapter.close()
    assert inner.events == [repr(Action(text, (ToolCall(text, "search", {"q": "x"}),)))]


def test_an_observation_over_max_length_is_an_env_error(inner: GenericTestEnv) -> None:
    adapter = GymnasiumAdapter(inner, [Task("x" * 100)], max_length=50)
    try:
        with pytest.raises(EnvError, match="observation of 1.. characters exceeds .* max_length=50"):
            adapter.reset(seed=0)
    finally:
        adapter.close()


def test_close_closes_the_env_once_and_refuses_later_calls(inner: GenericTestEnv) -> None:
    adapter = GymnasiumAdapter(inner, TASKS)
    adapter.reset(seed=0)
    adapter.close()
    adapter.close()
    assert inner.close_calls == 1
    with pytest.raises(EnvStateError, match="the GymnasiumAdapter is closed"):
        adapter.step("x")


def test_runs_a_sync_env_and_shuts_its_executor_down() -> None:
    class Echo(SyncEnv):
        def step(self, action: Action) -> StepResult:
            return StepResult([], 0.0, True, False, {"thread": threading.get_ident()})

    threads_before = threading.active_count()
    adapter = GymnasiumAdapter(from_sync(Echo()), TASKS)
    adapter.reset(seed=0)
    _, _, terminated, _, info = adapter.step("ls")
    assert terminated and info["thread"] != threading.get_ident()
    adapter.close()
    assert threading.active_count() == threads_before


def test_needs_tasks(inner: GenericTestEnv) -> None:
    with pytest.raises(ConfigError, match="GymnasiumAdapter needs at least one task"):
        GymnasiumAdapter(inner, [])
