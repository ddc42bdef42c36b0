"""Over-sampling and dynamic sampling: exactly ``target`` groups, drops counted by reason, the
rest aborted (their generation really stops), filters by dotted path, cleanup on failure."""

from __future__ import annotations

import asyncio

import pytest

from agentrl.errors import ConfigError
from agentrl.rollout import Termination
from agentrl.rollout.filters import DynamicFilterOutput, check_reward_nonzero_std, load_group_filter
from agentrl.rollout.partial import PartialRolloutBuffer
from agentrl.rollout.sampling import collect_groups
from tests.rollout.groups import MIXED, RIGHT, SLOW, WRONG, ids, policy, runner, source


def keep_odd_tasks(args, samples, **kwargs) -> bool:
    """A filter in slime's older style: a bare bool."""
    return samples[0].task_index % 2 == 1


def keep_odd_tasks_with_reason(args, samples, **kwargs) -> DynamicFilterOutput:
    keep = samples[0].task_index % 2 == 1
    return DynamicFilterOutput(keep=keep, reason=None if keep else "even_task")


def explode(args, samples, **kwargs) -> bool:
    raise ValueError("filter bug")


async def stopped(scripted) -> None:
    """Assert that no request is running and that no token is written any more."""
    emitted = scripted.emitted
    await asyncio.sleep(0.02)
    assert scripted.active == 0 and scripted.emitted == emitted


@pytest.mark.parametrize("abortable", [True, False], ids=["engine-abort", "cancellation"])
async def test_zero_variance_groups_are_dropped_and_the_rest_aborted(tokenizer, abortable):
    kinds = {0: RIGHT, 1: MIXED, 2: WRONG, 3: MIXED, 4: SLOW}
    scripted, envs = policy(tokenizer, kinds, abortable=abortable), []
    out = await collect_groups(runner(tokenizer, scripted, envs), source(sorted(kinds)), target=2, over_sampling_batch_size=5,
                               dynamic_filter=check_reward_nonzero_std, step=7)
    assert ids(out.groups) == [[(1, 0), (1, 1)], [(3, 0), (3, 1)]]
    assert [t.reward for t in out.trajectories] == [1.0, 0.0, 1.0, 0.0]
    assert all(t.termination is Termination.DONE and t.rollout_steps == [7] for t in out.trajectories)
    assert out.metrics == {
        "dynamic_filter/drop_zero_std_0.0": 1, "dynamic_filter/drop_zero_std_1.0": 1,
        "over_sampling/groups_launched": 5, "over_sampling/groups_dropped": 2, "over_sampling/groups_from_buffer": 0,
        "over_sampling/groups_leftover": 1, "over_sampling/episodes_aborted": 1, "over_sampling/requests_aborted": 1,
    }
    stalled = [rid for rid, _, _ in scripted.requests if rid.startswith("4-1-") and rid.endswith(":1")]
    assert len(stalled) == 1
    assert (scripted.aborted if abortable else scripted.cancelled) == stalled  # the one request in flight was stopped
    await stopped(scripted)
    assert len(envs) == 10 and [e.closed for e in envs] == [1] * 10


async def test_another_round_is_launched_when_drops_leave_too_few(tokenizer):
    kinds = {0: RIGHT, 1: MIXED, 2: MIXED, 3: SLOW, 4: MIXED}
    scripted, envs = policy(tokenizer, kinds), []
    out = await collect_groups(runner(tokenizer, scripted, envs), source(sorted(kinds)), target=2, over_sampling_batch_size=2,
                               dynamic_filter=check_reward_nonzero_std)
    assert ids(out.groups) == [[(1, 0), (1, 1)], [(2, 0), (2, 1)]]
    assert out.metrics["over_sampling/groups_launched"] == 4  # tasks 0, 1, then 2, 3; task 4 never drawn
    assert out.metrics["dynamic_filter/drop_zero_std_1.0"] == 1 and out.metrics["over_sampling/groups_leftover"] == 1
    await stopped(scripted)
    assert all(e.closed == 1 for e in envs)


async def test_fallback_filter_keeps_a_zero_variance_group_instead_of_another_round(tokenizer):
    kinds = {0: RIGHT, 1: MIXED, 2: MIXED}
    fallback = load_group_filter("slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std_with_fallback")
    out = await collect_groups(runner(tokenizer, policy(tokenizer, kinds), []), source(sorted(kinds)), target=2,
                               over_sampling_batch_size=2, dynamic_filter=fallback)
    assert ids(out.groups) == [[(0, 0), (0, 1)], [(1, 0), (1, 1)]]
    assert out.metrics["over_sampling/groups_launched"] == 2 and out.metrics["over_sampling/groups_dropped"] == 0


@pytest.mark.parametrize(
    ("path", "reason"),
    [("tests.rollout.test_sampling.keep_odd_tasks", "keep_odd_tasks"), ("tests.rollout.test_sampling:keep_odd_tasks_with_reason", "even_task")],
)
async def test_custom_filter_by_dotted_path(tokenizer, path, reason):
    kinds = {0: RIGHT, 1: MIXED, 2: WRONG, 3: MIXED}
    out = await collect_groups(runner(tokenizer, policy(tokenizer, kinds), []), source(sorted(kinds)), target=2,
                               over_sampling_batch_size=4, dynamic_filter=load_group_filter(path), filter_args="the config")
    assert ids(out.groups) == [[(1, 0), (1, 1)], [(3, 0), (3, 1)]]
    assert out.metrics[f"dynamic_filter/drop_{reason}"] == 2


@pytest.mark.parametrize("partial", [False, True], ids=["plain", "partial-rollout"])
async def test_a_failure_stops_generation_and_closes_every_env(tokenizer, partial):
    kinds = {0: RIGHT, 1: SLOW}
    scripted, envs = policy(tokenizer, kinds), []
    buffer = PartialRolloutBuffer() if partial else None
    with pytest.raises(ValueError, match="filter bug"):
        await collect_groups(runner(tokenizer, scripted, envs), source(sorted(kinds)), target=1, over_sampling_batch_size=2,
                             dynamic_filter=explode, buffer=buffer)
    await stopped(scripted)
    assert envs and [e.closed for e in envs] == [1] * len(envs)
    assert not buffer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target": 4, "over_sampling_batch_size": 2}, "--over-sampling-batch-size 2 must be >= --rollout-batch-size 4"),
        ({"target": 0}, "--rollout-batch-size must be >= 1"),
        ({"target": 1, "mask_offpolicy": True}, "--mask-offpolicy-in-partial-rollout needs --partial-rollout"),
        ({"target": 1, "dynamic_filter": lambda args, samples: "yes"}, "expected DynamicFilterOutput or bool"),
    ],
)
async def test_bad_settings_are_named(tokenizer, kwargs, message):
    kinds = {0: MIXED}
    with pytest.raises(ConfigError, match=message):
        await collect_groups(runner(tokenizer, policy(tokenizer, kinds), []), source(sorted(kinds)), **kwargs)


def test_load_group_filter_names_the_flag():
    with pytest.raises(ConfigError, match="--dynamic-sampling-filter-path 'tests.rollout.nowhere.f' could not be loaded"):
        load_group_filter("tests.rollout.nowhere.f")
