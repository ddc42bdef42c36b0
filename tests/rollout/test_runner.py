"""The rollout runner: terminations, failure isolation, groups, seeds and records."""

from __future__ import annotations

import asyncio
import json

import pytest

from agentrl.envs import Action, Env, MaxTurns, StepResult, Task
from agentrl.errors import PolicyError
from agentrl.policies import Generation, Policy, ScriptedPolicy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination, Trajectory, derive_seed, summarize
from tests.envs.testing_env import GenericTestEnv
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
    assert all(t.excluded for t in trajs[2:])  # a hung env says nothing about the policy either


@pytest.mark.parametrize(("fault", "message"), [("raise", "env.close raised OSError: container gone"),
                                                 ("hang", "env.close did not return within 0.1 s")])
async def test_a_close_that_fails_or_hangs_keeps_the_episode_and_is_noted(tokenizer, monkeypatch, fault, message):
    import agentrl.rollout.runner

    class BadClose(TagSearchEnv):
        async def close(self) -> None:
            if fault == "hang":
                await asyncio.sleep(3600)
            raise OSError("container gone")

    monkeypatch.setattr(agentrl.rollout.runner, "CLOSE_TIMEOUT_S", 0.1)
    trajs = await asyncio.wait_for(runner(tokenizer, BadClose, n_samples_per_prompt=2).run(TASKS, progress=False), 30)
    assert [t.termination for t in trajs] == [Termination.DONE] * 4 and [t.reward for t in trajs[:2]] == [1.0, 1.0]
    assert all(t.info["close_error"] == message for t in trajs)


async def test_messages_the_chat_template_refuses_end_only_their_episode_as_an_env_error(tokenizer):
    refuses_peru = "{%- if 'Peru' in messages[0]['content'] %}{{ raise_exception('no questions about Peru') }}{%- endif %}"
    renderer = ChatRenderer(tokenizer, chat_template=refuses_peru + tokenizer.chat_template)
    run = RolloutRunner(ScriptedPolicy(tokenizer, ["<answer>Paris</answer>"]), renderer, TagSearchEnv, RolloutConfig(n_samples_per_prompt=2))
    trajs = await run.run(TASKS, progress=False)
    assert [t.termination for t in trajs] == [Termination.DONE] * 2 + [Termination.ENV_ERROR] * 2
    assert all(t.error.startswith("the chat_template passed to ChatRenderer refused a conversation with roles [user]: no questions about Peru")
               for t in trajs[2:])


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


async def test_with_end_on_length_off_a_cut_turn_goes_to_the_env_and_the_episode_goes_on(tokenizer):
    replies = ["<search>capital of France</search> and much more text after the query", "<answer>Paris</answer>"]
    traj = await runner(tokenizer, TagSearchEnv, replies=replies, max_new_tokens=12, max_turns=4, end_on_length=False).run_episode(TASKS[0])
    assert traj.termination == Termination.DONE and traj.metrics["turns"] == 2 and traj.reward == 1.0
    assert "Paris is the capital of France." in traj.messages[2]["content"]  # the env answered the cut turn


async def test_context_limit_ends_the_episode_before_it_overflows(tokenizer):
    cfg = dict(replies=["<search>capital of France</search>"], max_context_len=120, max_new_tokens=64)
    traj = await runner(tokenizer, TagSearchEnv, **cfg).run_episode(TASKS[0])
    assert traj.termination == Termination.CONTEXT_LIMIT
    assert all(len(s) <= 120 for s in traj.segments)


class SecretEnv(Env):
    """A game whose ``reset`` draws a secret from the env's seeded generator; reward 1 for guessing it."""

    secrets: list[tuple[int, int]] = []  # (task index, secret), across instances

    async def reset(self, task, *, seed=None):
        await super().reset(task, seed=seed)
        self.secret = self.rng.randrange(1000)
        type(self).secrets.append((task.index, self.secret))
        return [{"role": "user", "content": "guess"}], {}

    async def step(self, action):
        return StepResult([], float(action.text.strip() == str(self.secret)), True, False, {})


@pytest.mark.parametrize("seed", [11, None])
async def test_the_samples_of_a_group_play_the_same_task_instance(tokenizer, seed):
    SecretEnv.secrets = []
    trajs = await runner(tokenizer, SecretEnv, replies=["7"], n_samples_per_prompt=4, seed=seed).run(TASKS, progress=False)
    assert [(t.task_index, t.sample_index) for t in trajs] == [(i, k) for i in range(2) for k in range(4)]
    by_task = {i: {s for task, s in SecretEnv.secrets if task == i} for i in range(2)}
    assert all(len(secrets) == 1 for secrets in by_task.values()), by_task  # one game per group
    assert by_task[0] != by_task[1]


async def test_reset_seed_per_sample_gives_each_sample_its_own_instance(tokenizer):
    SecretEnv.secrets = []
    await runner(tokenizer, SecretEnv, replies=["7"], n_samples_per_prompt=6, seed=11, reset_seed="sample").run(TASKS[:1], progress=False)
    assert len({s for _, s in SecretEnv.secrets}) > 1
    assert derive_seed(11, 0, 1) == derive_seed(11, 0, 1) != derive_seed(12, 0, 1)


async def test_sampling_seeds_are_derived_per_sample(tokenizer):
    seeds = []

    class SeedRecordingPolicy(ScriptedPolicy):
        async def generate(self, input_ids, sampling, *, rid=None):
            seeds.append(sampling.seed)
            return await super().generate(input_ids, sampling, rid=rid)

    policy = SeedRecordingPolicy(tokenizer, ["<answer>Paris</answer>"])
    await runner(tokenizer, TagSearchEnv, policy=policy, n_samples_per_prompt=3, seed=11).run(TASKS, progress=False)
    assert sorted(seeds) == sorted(derive_seed(derive_seed(11, i, k), 0) for i in range(2) for k in range(3))


@pytest.mark.parametrize(
    ("step_result", "message"),
    [
        (StepResult([], float("nan"), True, False, {}), "expected a finite float"),
        (StepResult([], 1.0, True, False, {"when": object()}), "not strict JSON"),
        (StepResult([], 1.0, True, False, {"score": float("inf")}), "not strict JSON"),
    ],
)
async def test_a_bad_reward_or_info_ends_only_its_episode_as_an_env_error(tokenizer, step_result, message):
    def step(env, action):
        return step_result if env.task_index == 1 else StepResult([], 1.0, True, False, {})

    def reset(env, task, seed):
        env.task_index = task.index
        return [{"role": "user", "content": task.prompt}], {}

    trajs = await runner(tokenizer, lambda: GenericTestEnv(reset, step), n_samples_per_prompt=2).run(TASKS, progress=False)
    assert [t.termination for t in trajs] == [Termination.DONE] * 2 + [Termination.ENV_ERROR] * 2
    assert all(message in t.error for t in trajs[2:])
    for t in trajs:
        json.dumps(t.to_dict(), allow_nan=False)  # every record stays strict JSON


async def test_an_env_factory_that_raises_ends_only_its_episode_with_the_traceback(tokenizer):
    made = 0

    def factory():
        nonlocal made
        made += 1
        if made == 2:
            raise AttributeError("'Config' object has no attribute 'difficulty'")
        return TagSearchEnv()

    trajs = await runner(tokenizer, factory, n_samples_per_prompt=2, concurrency=1).run(TASKS, progress=False)
    assert [t.termination for t in trajs].count(Termination.ENV_ERROR) == 1
    failed = next(t for t in trajs if t.termination == Termination.ENV_ERROR)
    assert "the env factory raised AttributeError" in failed.error
    assert "Traceback (most recent call last)" in failed.error and "in factory" in failed.error


async def test_a_bug_in_one_episode_cancels_the_others_instead_of_leaving_them_running(tokenizer):
    cancelled = []

    class BuggyPolicy(Policy):
        async def generate(self, input_ids, sampling, *, rid=None):
            if rid.startswith("0-"):
                raise RuntimeError("a bug, not an engine failure")
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.append(rid)
                raise

    run = runner(tokenizer, TagSearchEnv, policy=BuggyPolicy(), n_samples_per_prompt=1)
    with pytest.raises(ExceptionGroup) as caught:
        await asyncio.wait_for(run.run(TASKS, progress=False), 10)
    assert caught.group_contains(RuntimeError, match="a bug")
    assert len(cancelled) == 1


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
