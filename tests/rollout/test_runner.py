"""The rollout runner: terminations, failure isolation, groups, seeds and records."""

from __future__ import annotations

import asyncio
import json

import pytest

from agentrl.envs import Action, Env, MaxTurns, StepResult, Task
from agentrl.errors import PolicyError
from agentrl.policies import Generation, Policy, ScriptedPolicy, SamplingParams
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination, Trajectory, derive_seed, summarize
from tests.rollout.tag_env import TagSearchEnv

TASKS = [Task("What is the capital of France?", "Paris", index=0), Task("What is the capital of Peru?", "Lima", index=1)]


class FaultyEnv(TagSearchEnv):
    """Fails in a chosen way on a chosen task; counts closes."""

    closed = 0  # class-level on purpose: counts across instances

    def __init__(self, fault: str, on_task: int = 1) -> None:
        super().__init__()
        self.fault, self.on_task, self.task_index = fault, on_task, -1

    async def reset(self, task, *, seed=None):
        self.task_index = task.index
        if self.fault == "bad_reset" and task.index == self.on_task:
            return "not messages"
        return await super().reset(task, seed=seed)

    async def step(self, action: Action) -> StepResult:
        if self.task_index == self.on_task:
            if self.fault == "raise":
                raise ConnectionError("tool server down")
            if self.fault == "hang":
                await asyncio.sleep(3600)
            if self.fault == "bad_step":
                return {"observation": []}
        return await super().step(action)

    async def close(self) -> None:
        type(self).closed += 1


def runner(tokenizer, env_factory, replies=("<answer>Paris</answer>",), policy=None, **config):
    policy = policy or ScriptedPolicy(tokenizer, list(replies))
    return RolloutRunner(policy, ChatRenderer(tokenizer), env_factory, RolloutConfig(**config))


@pytest.mark.parametrize(
    ("fault", "termination", "message"),
    [
        ("raise", Termination.ENV_ERROR, "env.step raised ConnectionError: tool server down"),
        ("hang", Termination.TIMEOUT, "env.step took longer than step_timeout_s=0.2"),
        ("bad_step", Termination.ENV_ERROR, "env.step must return StepResult"),
        ("bad_reset", Termination.ENV_ERROR, "env.reset must return (messages, info)"),
    ],
)
async def test_a_failing_env_ends_only_its_own_episode(tokenizer, fault, termination, message):
    FaultyEnv.closed = 0
    run = runner(tokenizer, lambda: FaultyEnv(fault), n_samples_per_prompt=2, step_timeout_s=0.2)
    trajs = await run.run(TASKS, progress=False)
    assert [t.termination for t in trajs] == [Termination.DONE] * 2 + [termination] * 2
    assert [t.reward for t in trajs[:2]] == [1.0, 1.0]
    assert all(message in t.error for t in trajs[2:])
    assert FaultyEnv.closed == 4  # close runs for every episode, failed or not
    assert all(t.excluded for t in trajs[2:]) == (termination == Termination.ENV_ERROR)


async def test_episode_timeout_covers_generation_too(tokenizer):
    class SlowPolicy(Policy):
        async def generate(self, input_ids, sampling, *, rid=None):
            await asyncio.sleep(3600)

    traj = await runner(tokenizer, TagSearchEnv, policy=SlowPolicy(), episode_timeout_s=0.1).run_episode(TASKS[0])
    assert traj.termination == Termination.TIMEOUT and "episode_timeout_s=0.1" in traj.error


async def test_engine_failure_is_an_abort_left_out_of_training(tokenizer):
    class BrokenPolicy(Policy):
        async def generate(self, input_ids, sampling, *, rid=None):
            raise PolicyError("engine died")

    traj = await runner(tokenizer, TagSearchEnv, policy=BrokenPolicy()).run_episode(TASKS[0])
    assert traj.termination == Termination.ABORT and traj.excluded and traj.error == "engine died"


async def test_an_aborted_generation_is_not_kept_as_a_complete_turn(tokenizer):
    class AbortingPolicy(Policy):
        async def generate(self, input_ids, sampling, *, rid=None):
            return Generation([5, 6], [-1.0, -1.0], "abort")

    traj = await runner(tokenizer, TagSearchEnv, policy=AbortingPolicy()).run_episode(TASKS[0])
    assert traj.termination == Termination.ABORT and traj.segments[0].response_ids == []


async def test_runner_max_turns_is_a_truncation_not_a_termination(tokenizer):
    traj = await runner(tokenizer, TagSearchEnv, replies=["<search>capital of France</search>"], max_turns=3).run_episode(TASKS[0])
    assert traj.termination == Termination.MAX_TURNS and traj.metrics["turns"] == 3 and traj.rewards == [0.0] * 3


async def test_env_max_turns_wrapper_is_reported_as_max_turns(tokenizer):
    traj = await runner(tokenizer, lambda: MaxTurns(TagSearchEnv(), 2), replies=["<search>x</search>"]).run_episode(TASKS[0])
    assert traj.termination == Termination.MAX_TURNS and traj.metrics["turns"] == 2


async def test_a_turn_cut_by_length_is_still_scored_and_ends_the_episode(tokenizer):
    traj = await runner(tokenizer, TagSearchEnv, replies=["<answer>Paris</answer> and much more text after it"], max_new_tokens=8).run_episode(TASKS[0])
    # the env saw the partial turn (and here it still holds a complete answer)
    assert traj.termination == Termination.DONE and traj.reward == 1.0
    traj = await runner(tokenizer, TagSearchEnv, replies=["<search>capital of France</search> and more"], max_new_tokens=6).run_episode(TASKS[0])
    assert traj.termination == Termination.LENGTH and traj.metrics["sampled_tokens"] == 6


async def test_context_limit_ends_the_episode_before_it_overflows(tokenizer):
    cfg = dict(replies=["<search>capital of France</search>"], max_context_len=120, max_new_tokens=64)
    traj = await runner(tokenizer, TagSearchEnv, **cfg).run_episode(TASKS[0])
    assert traj.termination == Termination.CONTEXT_LIMIT
    assert all(len(s) <= 120 for s in traj.segments)


async def test_groups_come_back_ordered_and_seeds_are_derived_per_sample(tokenizer):
    seeds = []

    class SeedRecordingEnv(TagSearchEnv):
        async def reset(self, task, *, seed=None):
            seeds.append((task.index, seed))
            return await super().reset(task, seed=seed)

    trajs = await runner(tokenizer, SeedRecordingEnv, n_samples_per_prompt=3, seed=11).run(TASKS, progress=False)
    assert [(t.task_index, t.sample_index) for t in trajs] == [(i, k) for i in range(2) for k in range(3)]
    assert sorted(seeds) == sorted((i, derive_seed(11, i, k)) for i in range(2) for k in range(3))
    assert len({s for _, s in seeds}) == 6
    assert derive_seed(11, 0, 1) == derive_seed(11, 0, 1) != derive_seed(12, 0, 1)


async def test_trajectory_records_round_trip_through_json_with_a_schema_version(tokenizer):
    traj = await runner(tokenizer, TagSearchEnv, replies=["<search>capital of France</search>", "<answer>Paris</answer>"]).run_episode(TASKS[0])
    record = json.loads(json.dumps(traj.to_dict()))
    assert record["schema_version"] == 1 and record["termination"] == "done" and record["reward"] == 1.0
    assert Trajectory.from_dict(record) == traj
    with pytest.raises(ValueError, match="schema_version"):
        Trajectory.from_dict({**record, "schema_version": 99})


async def test_summary_counts_terminations_and_leaves_excluded_episodes_out_of_the_mean(tokenizer):
    trajs = await runner(tokenizer, lambda: FaultyEnv("raise"), n_samples_per_prompt=2).run(TASKS, progress=False)
    summary = summarize(trajs, elapsed_s=1.0)
    assert summary["termination"] == {"done": 2, "env_error": 2}
    assert summary["reward_mean"] == 1.0 and summary["excluded"] == 2


async def test_many_concurrent_episodes_respect_the_concurrency_bound(tokenizer):
    in_flight = peak = 0

    class CountingPolicy(ScriptedPolicy):
        async def generate(self, input_ids, sampling, *, rid=None):
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            return await super().generate(input_ids, sampling, rid=rid)

    policy = CountingPolicy(tokenizer, ["<answer>Paris</answer>"])
    tasks = [Task("q", "Paris", index=i) for i in range(50)]
    trajs = await runner(tokenizer, TagSearchEnv, policy=policy, concurrency=7).run(tasks, progress=False)
    assert len(trajs) == 50 and peak == 7
