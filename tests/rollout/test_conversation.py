"""Token bookkeeping with SmolLM2's real tokenizer: sampled ids verbatim, observations masked."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from agentrl.envs import Task
from agentrl.policies import Generation, Policy, SamplingParams
from agentrl.rollout import ChatRenderer, PrefixMismatchError, RolloutConfig, RolloutRunner, Termination
from agentrl.rollout.conversation import TokenConversation
from tests.rollout.tag_env import TagSearchEnv

REPLIES = ["I need to look this up. <search>capital of France</search>", "<answer>Paris</answer>"]

# A Qwen3-style template that is NOT append-only: it strips <think> blocks from assistant turns
# before the last user message, so an earlier turn renders differently once the env answers.
STRIP_THINK_TEMPLATE = """
{%- set ns = namespace(last_user=-1) %}
{%- for m in messages %}{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}{%- endfor %}
{%- for m in messages %}
{%- set content = m.content %}
{%- if m.role == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}
{%- set content = content.split('</think>')[-1].lstrip('\\n') %}
{%- endif %}
{{- '<|im_start|>' + m.role + '\\n' + content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


class CharByCharPolicy(Policy):
    """Samples each character as its own token: valid ids that re-encoding the text would NOT
    reproduce, so any re-tokenization by the runner shows up as a difference."""

    def __init__(self, tokenizer, replies: Sequence[str]) -> None:
        self.tokenizer, self.replies = tokenizer, replies
        self.sampled: list[list[int]] = []

    async def generate(self, input_ids, sampling: SamplingParams, *, rid=None) -> Generation:
        turn = int(rid.rsplit(":", 1)[1])
        ids = [i for ch in self.replies[turn] for i in self.tokenizer.encode(ch, add_special_tokens=False)]
        ids.append(self.tokenizer.eos_token_id)
        self.sampled.append(ids)
        return Generation(ids, [-0.1 * (k + 1) for k in range(len(ids))], "stop", matched_stop=ids[-1])


def _runner(tokenizer, policy, *, template=None, mode="auto"):
    renderer = ChatRenderer(tokenizer, chat_template=template)
    return RolloutRunner(policy, renderer, lambda: TagSearchEnv(), RolloutConfig(bridge_mode=mode, max_turns=4))


async def test_append_only_template_keeps_sampled_ids_verbatim_and_masks_observations(tokenizer):
    policy = CharByCharPolicy(tokenizer, REPLIES)
    renderer = ChatRenderer(tokenizer)
    traj = await _runner(tokenizer, policy).run_episode(Task("What is the capital of France?", "Paris"))

    assert traj.termination == Termination.DONE and traj.reward == 1.0
    assert len(traj.segments) == 1 and traj.metrics["prefix_mismatches"] == 0
    seg = traj.segments[0]
    assert len(seg.response_ids) == len(seg.loss_mask) == len(seg.rollout_logprobs)
    # every sampled token appears verbatim, in order, with mask 1 and its logprob
    trained = [t for t, m in zip(seg.response_ids, seg.loss_mask) if m]
    assert trained == policy.sampled[0] + policy.sampled[1]
    trained_lp = [lp for lp, m in zip(seg.rollout_logprobs, seg.loss_mask) if m]
    assert trained_lp == [-0.1 * (k + 1) for k in range(len(policy.sampled[0]))] + [-0.1 * (k + 1) for k in range(len(policy.sampled[1]))]
    # the sampled ids are not what re-encoding the text gives: the runner did not re-tokenize
    assert policy.sampled[0] != tokenizer.encode(REPLIES[0], add_special_tokens=False) + [tokenizer.eos_token_id]
    # every observation token has mask 0 and the masked text is exactly the bridge
    masked = tokenizer.decode([t for t, m in zip(seg.response_ids, seg.loss_mask) if not m])
    assert masked == "\n<|im_start|>user\n<information>Paris is the capital of France.</information><|im_end|>\n<|im_start|>assistant\n"
    # decoding the trajectory reproduces the conversation as the template renders it
    decoded = tokenizer.decode(seg.token_ids)
    full = renderer.render(traj.messages, add_generation_prompt=False)
    assert full.startswith(decoded) and full[len(decoded):] == "\n"
    assert [m["role"] for m in traj.messages] == ["user", "assistant", "user", "assistant"]


async def test_template_that_strips_think_blocks_is_detected_and_starts_a_new_segment(tokenizer):
    replies = ["<think>I should search.</think><search>capital of France</search>", "<think>Found it.</think><answer>Paris</answer>"]
    policy = CharByCharPolicy(tokenizer, replies)
    renderer = ChatRenderer(tokenizer, chat_template=STRIP_THINK_TEMPLATE)
    traj = await _runner(tokenizer, policy, template=STRIP_THINK_TEMPLATE).run_episode(Task("Capital of France?", "Paris"))

    assert traj.termination == Termination.DONE and traj.reward == 1.0
    assert traj.metrics["prefix_mismatches"] == 1 and len(traj.segments) == 2
    first, second = traj.segments
    assert [t for t, m in zip(first.response_ids, first.loss_mask) if m] == policy.sampled[0]
    assert [t for t, m in zip(second.response_ids, second.loss_mask) if m] == policy.sampled[1]
    assert all(m == 1 for m in second.loss_mask)  # nothing to bridge after the final answer
    # the second segment's prompt is the canonical rendering, with the earlier think stripped
    prompt_text = tokenizer.decode(second.prompt_ids)
    assert "I should search." not in prompt_text and "<search>capital of France</search>" in prompt_text
    assert prompt_text == renderer.render(traj.messages[:3], add_generation_prompt=True)


async def test_segment_mode_starts_a_segment_every_turn_without_counting_mismatches(tokenizer):
    traj = await _runner(tokenizer, CharByCharPolicy(tokenizer, REPLIES), mode="segment").run_episode(Task("Capital of France?", "Paris"))
    assert len(traj.segments) == 2 and traj.metrics["prefix_mismatches"] == 0


async def test_append_mode_refuses_a_template_that_is_not_append_only(tokenizer):
    replies = ["<think>x</think><search>capital of France</search>", "<answer>Paris</answer>"]
    runner = _runner(tokenizer, CharByCharPolicy(tokenizer, replies), template=STRIP_THINK_TEMPLATE, mode="append")
    with pytest.raises(PrefixMismatchError, match="not append-only"):
        await runner.run_episode(Task("Capital of France?", "Paris"))


async def test_an_observation_ending_with_an_assistant_message_is_a_masked_prefill_the_policy_continues(tokenizer):
    policy = CharByCharPolicy(tokenizer, ["<search>capital of France</search>", " Paris</answer>"])
    renderer = ChatRenderer(tokenizer)
    env = TagSearchEnv(prefill="<answer>")
    traj = await RolloutRunner(policy, renderer, lambda: env, RolloutConfig(max_turns=4)).run_episode(Task("Capital of France?", "Paris"))

    assert traj.termination == Termination.DONE and traj.reward == 1.0
    assert env.actions == ["<search>capital of France</search>", "<answer> Paris</answer>"]  # the env sees prefill + sampled
    assert traj.messages[-1] == {"role": "assistant", "content": "<answer> Paris</answer>"}  # one assistant turn, not two
    (seg,) = traj.segments
    assert [t for t, m in zip(seg.response_ids, seg.loss_mask) if m] == policy.sampled[0] + policy.sampled[1]
    masked = tokenizer.decode([t for t, m in zip(seg.response_ids, seg.loss_mask) if not m])
    assert masked.endswith("<|im_start|>assistant\n<answer>")
    full = renderer.render(traj.messages, add_generation_prompt=False)
    assert full.startswith(tokenizer.decode(seg.token_ids))


LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look a fact up.",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
OPENING = [{"role": "user", "content": "What is the capital of France? Use the tools."}]

# A ChatML template that renders the tool schemas in a system turn, as tool-aware templates do.
TOOLS_TEMPLATE = """
{%- if tools %}{{- '<|im_start|>system\\nYou may call these tools:\\n' }}{%- for t in tools %}{{- t | tojson + '\\n' }}{%- endfor %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


def tool_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentrl.rollout.conversation" and r.levelno == logging.WARNING]


# Renders that tools exist, not what they are.
COUNTS_TOOLS_TEMPLATE = """
{%- if tools %}{{- '<|im_start|>system\\nYou have ' + tools | length | string + ' tools.<|im_end|>\\n' }}{%- endif %}
""" + TOOLS_TEMPLATE.split("{%- endif %}", 1)[1]


@pytest.mark.parametrize(("template", "source", "why"), [
    (None, "the chat template of {name_or_path}", "rendering with the schemas of lookup gives the same text as without them"),
    (COUNTS_TOOLS_TEMPLATE, "the chat_template passed to ChatRenderer", "lookup not in the text it renders"),
], ids=["smollm2", "counts-tools"])
def test_a_template_that_ignores_tools_is_warned_about_once_per_renderer(tokenizer, caplog, template, source, why):
    renderer = ChatRenderer(tokenizer, chat_template=template)
    for _ in range(2):
        TokenConversation(renderer, OPENING, tools=[LOOKUP])
    renderer.render(OPENING, tools=[LOOKUP], add_generation_prompt=False)
    (warning,) = tool_warnings(caplog)
    assert warning == (
        f"{source.format(name_or_path=tokenizer.name_or_path)} ignores `tools` ({why}), so the model sees the schemas only if "
        "the env's messages carry them; put the schemas in the system prompt, or use a chat template that renders tools "
        "(ChatRenderer(chat_template=...))")
    ChatRenderer(tokenizer, chat_template=template).render(OPENING, tools=[LOOKUP], add_generation_prompt=True)  # a new renderer checks again
    assert len(tool_warnings(caplog)) == 2


def test_a_template_that_renders_tools_and_a_render_without_tools_do_not_warn(tokenizer, caplog):
    renderer = ChatRenderer(tokenizer, chat_template=TOOLS_TEMPLATE)
    conversation = TokenConversation(renderer, OPENING, tools=[LOOKUP])
    assert '"name": "lookup"' in tokenizer.decode(conversation.context_ids)
    TokenConversation(ChatRenderer(tokenizer), OPENING)
    assert tool_warnings(caplog) == []
