"""Partial rollout: aborted episodes wait in the buffer (env open, tokens exact) and the next step
resumes them token-exact, masking what older weights sampled when asked; buffer filters by path."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from agentrl.errors import ConfigError
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination, Trajectory
from agentrl.rollout.filters import check_reward_nonzero_std
from agentrl.rollout.interrupt import Interrupt
from agentrl.rollout.partial import BufferedGroup, PartialRolloutBuffer, load_buffer_filter, pop_first
from agentrl.rollout.runner import SuspendedEpisode
from agentrl.rollout.sampling import collect_groups
from tests.rollout.groups import MIXED, SLOW, STALL_AT, answer, ids, policy, runner, source, task
from tests.rollout.tag_env import TagSearchEnv


def newest_first(args, rollout_id, buffer, num_samples):
    """A buffer filter that takes the newest groups and leaves the buffer to remove them."""
    return buffer[::-1][:num_samples]


async def first_step(tokenizer, kinds, buffer):
    """Step 1 keeps the MIXED group 1; the SLOW groups are aborted into ``buffer``."""
    scripted, envs = policy(tokenizer, kinds), []
    run = runner(tokenizer, scripted, envs)
    out = await collect_groups(run, source(sorted(kinds)), target=1, over_sampling_batch_size=len(kinds),
                               dynamic_filter=check_reward_nonzero_std, buffer=buffer, step=1)
    assert ids(out.groups) == [[(1, 0), (1, 1)]]
    return scripted, envs, run, out


@pytest.mark.parametrize("mask_offpolicy", [False, True], ids=["kept", "masked"])
async def test_aborted_episodes_resume_token_exact_in_the_next_step(tokenizer, mask_offpolicy):
    buffer = PartialRolloutBuffer()
    scripted, envs, run, out = await first_step(tokenizer, {1: MIXED, 3: SLOW}, buffer)
    assert out.metrics["partial_rollout/buffer_groups"] == 1 and out.metrics["over_sampling/episodes_aborted"] == 1
    (group,) = buffer.groups
    ended, suspended = group.members
    assert group.task.index == 3 and group.start_step == 1
    assert isinstance(ended, Trajectory) and ended.reward == 0.0 and ended.rollout_steps == [1]
    assert isinstance(suspended, SuspendedEpisode) and suspended.turns == 1 and suspended.rollout_steps == [1]
    assert suspended.partial_ids == tokenizer.encode(answer(3), add_special_tokens=False)[:STALL_AT]
    context = suspended.context_ids
    open_envs = [e for e in envs if not e.closed]
    assert len(open_envs) == 1 and open_envs[0].task.index == 3  # the suspended episode's env stays open

    scripted.gate.set()
    scripted.version = 1
    second = await collect_groups(run, source([]), target=1, dynamic_filter=check_reward_nonzero_std, buffer=buffer,
                                  mask_offpolicy=mask_offpolicy, step=2)
    assert ids(second.groups) == [[(3, 0), (3, 1)]] and len(buffer) == 0
    assert second.metrics["over_sampling/groups_from_buffer"] == 1 and second.metrics["over_sampling/groups_launched"] == 1
    first, resumed = second.groups[0]
    _, input_ids, max_new_tokens = scripted.requests[-1]
    assert input_ids == context and max_new_tokens == 64 - STALL_AT  # continued on exactly the tokens so far
    assert resumed.termination is Termination.DONE and resumed.reward == 1.0
    assert resumed.rollout_steps == [1, 2] and resumed.weight_versions == [0, 0]  # turn 1 began under version 0
    assert first is ended and first.rollout_steps == [1]

    reference = policy(tokenizer, {3: SLOW})
    reference.gate.set()
    uninterrupted = await runner(tokenizer, reference, []).run_episode(task(3), 1)
    (segment,), (expected,) = resumed.segments, uninterrupted.segments
    assert segment.token_ids == expected.token_ids
    assert segment.token_ids[: len(context)] == context  # the prefix is the tokens sampled before the abort
    before = len(context) - len(segment.prompt_ids)
    if mask_offpolicy:
        assert segment.loss_mask == [0] * before + expected.loss_mask[before:]
        assert segment.rollout_logprobs == [0.0] * before + expected.rollout_logprobs[before:]
        assert resumed.metrics["offpolicy_masked_tokens"] == sum(expected.loss_mask[:before]) > STALL_AT
        assert sum(first.segments[0].loss_mask) == 0  # ended in step 1: all of it off-policy
        masked = resumed.metrics["offpolicy_masked_tokens"] + first.metrics["offpolicy_masked_tokens"]
        assert second.metrics["partial_rollout/offpolicy_masked_tokens"] == masked
    else:
        assert (segment.loss_mask, segment.rollout_logprobs) == (expected.loss_mask, expected.rollout_logprobs)
        assert sum(first.segments[0].loss_mask) > 0 and second.metrics["partial_rollout/offpolicy_masked_tokens"] == 0
    assert [e.closed for e in envs] == [1] * len(envs)


@pytest.mark.parametrize(
    ("path", "taken"),
    [(None, 3), ("slime.rollout.data_source.pop_first", 3), ("tests.rollout.test_partial.newest_first", 4)],
)
async def test_buffer_filter_by_dotted_path_picks_the_groups_to_resume(tokenizer, path, taken):
    buffer = PartialRolloutBuffer(load_buffer_filter(path) if path else pop_first)
    scripted, envs, run, _ = await first_step(tokenizer, {1: MIXED, 3: SLOW, 4: SLOW}, buffer)
    assert [g.task.index for g in buffer.groups] == [3, 4]
    scripted.gate.set()
    second = await collect_groups(run, source([]), target=1, dynamic_filter=check_reward_nonzero_std, buffer=buffer, step=2)
    assert ids(second.groups) == [[(taken, 0), (taken, 1)]]
    (left,) = buffer.groups
    assert left.task.index == 7 - taken and len(left.suspended) == 1
    assert sum(not e.closed for e in envs) == 1  # the waiting group's env is still open
    await buffer.aclose()
    assert [e.closed for e in envs] == [1] * len(envs) and len(buffer) == 0


def test_a_buffer_filter_that_breaks_its_contract_is_named():
    groups = [BufferedGroup(task(i), [], start_step=0) for i in range(3)]
    buffer = PartialRolloutBuffer(lambda args, rollout_id, buffer, n: groups[:1] * 2)
    buffer.add(groups)
    with pytest.raises(ConfigError, match="--buffer-filter-path .* must return at most num_samples=2 distinct groups"):
        buffer.take(2, step=0)
    assert buffer.groups == tuple(groups)  # nothing taken


async def test_a_turn_on_the_embedded_engine_is_suspended_and_continued(tokenizer):
    """The real engine's abort by rid: the partial turn is kept and continued within its budget."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    async with EmbeddedEngine(AutoModelForCausalLM.from_config(config), tokenizer, seed=0) as engine:
        run = RolloutRunner(engine, ChatRenderer(tokenizer), TagSearchEnv, RolloutConfig(max_new_tokens=120, max_turns=1, temperature=0.0))
        interrupt = Interrupt(keep_partial=True)
        playing = asyncio.create_task(run.resume_episode(SuspendedEpisode(task(0)), interrupt, step=1))
        while engine.num_running == 0:  # running: its first token is sampled
            await asyncio.sleep(0.01)
        assert await interrupt.abort() == 1
        suspended = await playing
        assert isinstance(suspended, SuspendedEpisode) and 0 < len(suspended.partial_ids) < 120
        context = suspended.context_ids
        resumed = await run.resume_episode(suspended, Interrupt(), step=2)
    assert isinstance(resumed, Trajectory) and resumed.termination is Termination.LENGTH  # the whole turn's budget, not the context
    (segment,) = resumed.segments
    assert segment.token_ids[: len(context)] == context and len(segment.response_ids) == 120
    assert segment.loss_mask == [1] * 120 and resumed.rollout_steps == [1, 2]
