"""slime plug-ins, written in slime's style from its documented contracts (imports unchanged:
``slime.*`` resolves to agentrl's stand-ins), trained through ``agentrl train`` on a tiny Llama
with the embedded engine behind SGLang's HTTP API. What the trainer got is checked token by
token against what the generate function built."""

from __future__ import annotations

import json

import pytest

from agentrl.config import load_config
from agentrl.errors import TrainingError
from agentrl.train import train

MULTI_TURN = '''
import json, os
from slime.rollout.sglang_rollout import GenerateState
from slime.utils.http_utils import post
from slime.utils.types import Sample

STATUS = {0: "completed", 1: "TRUNCATED", 2: Sample.Status.ABORTED}


async def generate(args, sample, sampling_params):
    """Two model turns with a tool's output between them (masked), as slime's Search-R1 example."""
    state = GenerateState(args)
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"
    sample.tokens = state.tokenizer(sample.prompt, add_special_tokens=False)["input_ids"]
    for turn in range(2):
        output = await post(url, {"input_ids": sample.tokens, "sampling_params": dict(sampling_params, max_new_tokens=5), "return_logprob": True})
        assert output["meta_info"]["e2e_latency"] > 0  # SGLang's field, which clients read
        pairs = output["meta_info"]["output_token_logprobs"]
        sample.append_response_tokens(args, tokens=[p[1] for p in pairs], log_probs=[p[0] for p in pairs], trainable=True,
                                      meta_info=output["meta_info"], text=output["text"])
        if turn == 0:
            observation = "\\n<tool_response>42</tool_response>\\n"
            ids = state.tokenizer(observation, add_special_tokens=False)["input_ids"]
            sample.append_response_tokens(args, tokens=ids, trainable=False, text=observation)
    sample.tool_calls = 1  # an attribute slime's Sample does not declare
    sample.status = STATUS[sample.group_index]  # strings too
    with open(os.environ["SLIME_TEST_RECORD"], "a") as f:
        f.write(json.dumps({"tokens": sample.tokens, "n": sample.response_length, "loss_mask": sample.loss_mask,
                            "logprobs": sample.rollout_log_probs, "observation": ids}) + "\\n")
    return sample


async def reward(args, sample, **kwargs):
    assert isinstance(sample, Sample) and sample.tool_calls == 1, "the reward must see the generate function's own sample"
    return {"score": float(len(sample.response) % 3), "tools": sample.tool_calls}
'''


def run_args(tiny_llama_dir, data, out, *extra):
    return ["--hf-checkpoint", str(tiny_llama_dir), "--prompt-data", str(data), "--rollout-batch-size", "3", "--n-samples-per-prompt", "2",
            "--rollout-max-response-len", "8", "--output-dir", str(out), "--lr", "1e-4", "--no-bf16", "--num-rollout", "1", "--deterministic", *extra]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"input": f"What is {i} + 1?", "label": str(i + 1)}) + "\n" for i in range(6)))
    return path


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))  # tests/conftest.py forgets the modules written here afterwards
    return tmp_path


def dumped(out, step=1):
    return [json.loads(line) for line in (out / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines()]


def metrics(out):
    return next(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "rollout/reward_mean" in line)


def test_a_multi_turn_generate_function_trains_on_its_exact_tokens(tiny_llama_dir, data, tmp_path, plugin_dir, monkeypatch):
    (plugin_dir / "slime_multi_turn.py").write_text(MULTI_TURN)
    record = tmp_path / "built.jsonl"
    monkeypatch.setenv("SLIME_TEST_RECORD", str(record))
    out = tmp_path / "run"
    train(load_config(run_args(tiny_llama_dir, data, out, "--custom-generate-function-path", "slime_multi_turn.generate",
                               "--custom-rm-path", "slime_multi_turn.reward", "--reward-key", "score")))
    built = {tuple(r["tokens"]): r for r in map(json.loads, record.read_text().splitlines())}
    trajectories = dumped(out)
    assert [t["termination"] for t in trajectories] == ["done", "done", "length", "length", "abort", "abort"]  # string statuses
    for t in trajectories[:4]:
        (segment,) = t["segments"]
        sample = built[tuple(segment["prompt_ids"] + segment["response_ids"])]  # the very tokens the function built
        assert len(segment["response_ids"]) == sample["n"]
        assert segment["loss_mask"] == sample["loss_mask"]  # token by token
        assert segment["rollout_logprobs"] == [lp if m else 0.0 for lp, m in zip(sample["logprobs"], sample["loss_mask"])]
        masked = [tok for tok, m in zip(segment["response_ids"], segment["loss_mask"]) if m == 0]
        assert masked == sample["observation"]  # exactly the tool's output is masked
        assert t["reward"] == len(t["messages"][-1]["content"]) % 3  # --reward-key score of the dict
    step = metrics(out)
    assert step["rollout/excluded"] == 2 and step["rollout/termination/abort"] == 2
    assert step["rollout/info/tools"] == 1.0  # the dict reward's other numbers
    assert step["train/train_rollout_logprob_abs_diff"] < 1e-4  # the trainer's log-probs of those tokens equal the engine's


FAN_OUT = '''
import copy
from slime.rollout.sglang_rollout import generate as slime_generate
from slime.utils.types import Sample


async def generate(args, sample, sampling_params):
    """One rollout, two trained samples sharing rollout_id (slime's fan-out); the second of task 0
    is removed from the loss (remove_sample)."""
    first = await slime_generate(args, sample, sampling_params)
    second = copy.deepcopy(first)
    second.remove_sample = sample.group_index == 0
    first.rollout_id = second.rollout_id = sample.index
    return [first, second]


async def reward(args, samples, **kwargs):
    """slime calls a custom reward with the list of a list[Sample] return."""
    assert isinstance(samples, list) and all(isinstance(s, Sample) for s in samples)
    return [0.25 * (1 + len(s.response) % 2) for s in samples]
'''


def test_list_sample_returns_and_remove_sample(tiny_llama_dir, data, tmp_path, plugin_dir):
    (plugin_dir / "slime_fan_out.py").write_text(FAN_OUT)
    out = tmp_path / "run"
    train(load_config(run_args(tiny_llama_dir, data, out, "--custom-generate-function-path", "slime_fan_out.generate",
                               "--custom-rm-path", "slime_fan_out.reward")))
    trajectories = dumped(out)
    assert len(trajectories) == 6 and all(t["termination"] in ("done", "length") for t in trajectories)
    for t in trajectories:
        first, second = t["segments"]
        assert first["prompt_ids"] + first["response_ids"] == second["prompt_ids"] + second["response_ids"]
        assert first["loss_mask"] == [1] * len(first["response_ids"])  # slime's default generate: every token sampled
        assert second["loss_mask"] == ([0] if t["task_index"] == 0 else [1]) * len(second["response_ids"])  # remove_sample
        assert t["rewards"] == [0.25 * (1 + len(t["messages"][-1]["content"]) % 2)] * 2 and t["reward"] == sum(t["rewards"])
    assert metrics(out)["rollout/excluded"] == 0


BROKEN = '''
async def generate(args, sample, sampling_params):
    raise RuntimeError("the search backend is down")
'''


def test_a_run_whose_every_episode_fails_raises_with_the_first_traceback(tiny_llama_dir, data, tmp_path, plugin_dir):
    (plugin_dir / "slime_broken.py").write_text(BROKEN)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as failure:
        train(load_config(run_args(tiny_llama_dir, data, out, "--custom-generate-function-path", "slime_broken.generate", "--rm-type", "deepscaler")))
    message = str(failure.value)
    assert "none of its 6 episodes can be trained on (6 env_error)" in message
    assert "Traceback (most recent call last)" in message and 'raise RuntimeError("the search backend is down")' in message
    assert "RuntimeError: the search backend is down" in message
    assert not (out / "checkpoints").exists() and not (out / "hf_model").exists()


@pytest.mark.parametrize(("generate", "termination", "error"), [
    ("sleep", "timeout", "episode exceeded episode_timeout_s=0.2"),
    ("own_timeout", "env_error", "TimeoutError: the tool timed out"),
], ids=["past-the-episode-timeout", "its-own-timeout-error"])
async def test_a_generate_function_past_the_episode_timeout_ends_as_timeout(tokenizer, generate, termination, error):
    """--rollout-episode-timeout bounds a generate function's episode as it bounds an env's."""
    import asyncio
    from argparse import Namespace

    from agentrl.compat.slime_generate import SlimeGenerateRunner
    from agentrl.envs import Task
    from agentrl.rollout import RolloutConfig

    async def generate_fn(args, sample, sampling_params):
        if generate == "sleep":
            await asyncio.sleep(3600)
        raise TimeoutError("the tool timed out")

    runner = SlimeGenerateRunner(generate_fn, Namespace(), tokenizer, None, RolloutConfig(n_samples_per_prompt=2, episode_timeout_s=0.2))
    trajectories = await asyncio.wait_for(runner.run([Task("What is 1 + 1?", "2")], progress=False), 30)
    assert [t.termination.value for t in trajectories] == [termination] * 2 and all(error in t.error for t in trajectories)
    assert all(t.excluded for t in trajectories)
