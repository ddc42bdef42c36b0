"""`agentrl train` end to end on a tiny randomly initialised Llama with SmolLM2's tokenizer:
metrics, plots, dumps, checkpoints, export, resume, and the one-step-async loop."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from agentrl.config import load_config
from agentrl.train import train


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, eos_token_id=tokenizer.eos_token_id, bos_token_id=1)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"input": f"What is {i} + 1?", "label": str(i + 1)}) + "\n" for i in range(6)))
    return path


def args(tiny_dir, data, out, *extra):
    return ["--hf-checkpoint", str(tiny_dir), "--prompt-data", str(data), "--eval-prompt-data", "small", str(data),
            "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "8",
            "--eval-interval", "2", "--save-interval", "1", "--output-dir", str(out), "--lr", "1e-4", "--deterministic", *extra]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", [[], ["--train-async"]])
def test_train_writes_what_a_user_sees(tiny_dir, data, tmp_path, mode):
    out = tmp_path / "run"
    train(load_config(args(tiny_dir, data, out, "--num-rollout", "3", *mode)))
    rows = records(out)
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("perf/step_time_s", "perf/rollout_time_s", "perf/train_time_s", "weight_version"):
        assert all(key in r for r in steps), key
    synced = steps[1:] if mode else steps  # async: weights trained in step k are pushed at the start of step k + 1
    assert all("perf/weight_sync_time_s" in r for r in synced)
    assert [r["step"] for r in rows if "eval/small/reward_mean" in r] == [0, 2, 3]
    assert [r["weight_version"] for r in steps] == ([1, 2, 3] if not mode else [0, 1, 2])
    assert (out / "reward_curves.png").stat().st_size > 0 and (out / "config.json").is_file()
    assert "⟦" in (out / "rollouts" / "step_00001.txt").read_text()
    assert (out / "checkpoints" / "latest").read_text() == "step_00003"
    assert (out / "hf_model" / "model.safetensors").is_file() and (out / "hf_model" / "tokenizer.json").is_file()
    assert any((out / "tensorboard").iterdir())


def test_resume_continues_from_the_checkpoint_with_the_same_data_order(tiny_dir, data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(args(tiny_dir, data, full, "--num-rollout", "4")))
    train(load_config(args(tiny_dir, data, part, "--num-rollout", "2")))
    train(load_config(args(tiny_dir, data, part, "--num-rollout", "4", "--load", str(part / "checkpoints"))))
    full_steps = {r["step"]: r for r in records(full) if "rollout/reward_mean" in r}
    part_steps = {r["step"]: r for r in records(part) if "rollout/reward_mean" in r}
    assert sorted(part_steps) == [1, 2, 3, 4]
    for step in (3, 4):  # same tasks (data position restored) and same sampled tokens (--deterministic)
        assert part_steps[step]["rollout/response_len_mean"] == full_steps[step]["rollout/response_len_mean"]
        assert part_steps[step]["rollout/reward_mean"] == full_steps[step]["rollout/reward_mean"]
    dump = lambda run, step: [r["segments"] for r in map(json.loads, (run / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines())]  # noqa: E731
    assert dump(part, 3) == dump(full, 3) and dump(part, 4) == dump(full, 4)
