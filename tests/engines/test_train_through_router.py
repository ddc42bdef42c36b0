"""`agentrl train` sampling from two real `agentrl serve` workers behind a real sglang-router, with
weights pushed after every step over a gloo group and from disk."""

from __future__ import annotations

import json

import pytest

from agentrl.config import load_config
from agentrl.train import train

pytest.importorskip("sglang_router")


@pytest.mark.parametrize("weight_sync", ["distributed", "disk"])
def test_training_through_the_router_keeps_every_worker_on_the_trained_weights(tiny_dir, tmp_path, monkeypatch, weight_sync):
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"input": f"What is {i} + 1?", "label": str(i + 1)}) + "\n" for i in range(8)))
    # a reward that differs between almost any two responses, so every step has groups to train on (with len % 3,
    # all four groups of a step tied about 1% of the time: nothing trained, no train/ metrics to check)
    (tmp_path / "char_sum_rm.py").write_text("async def reward(args, sample, **kw):\n    return sum(map(ord, sample.response)) % 97 / 97\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    train(load_config([
        "--hf-checkpoint", str(tiny_dir), "--prompt-data", str(data), "--custom-rm-path", "char_sum_rm.reward", "--no-bf16",
        "--rollout-batch-size", "4", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "8", "--num-rollout", "3",
        "--lr", "1e-3", "--output-dir", str(out), "--rollout-num-engines", "2", "--weight-sync", weight_sync,
        "--router-policy", "round_robin",
    ]))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["weight_version"] for s in steps] == [1, 2, 3]  # each push checks every worker reports it, or raises
    for step, record in enumerate(steps, 1):
        dumped = [json.loads(line) for line in (out / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines()]
        assert {v for r in dumped for v in r["weight_versions"]} == {step - 1}  # sampled on the weights pushed before
        # the trainer's log-probs of the tokens the workers sampled equal the workers' own: the pushed weights are exact
        assert record["train/train_rollout_logprob_abs_diff"] < 1e-4, record
    logs = sorted((out / "engines").glob("engine-*.log"))
    assert len(logs) == 2 and (out / "engines" / "router.log").is_file()


def test_a_worker_killed_mid_rollout_is_restarted_and_the_run_trains_only_whole_episodes(tiny_dir, tmp_path):
    data = tmp_path / "tasks.jsonl"
    data.write_text("".join(json.dumps({"input": f"topic {i}", "label": ""}) + "\n" for i in range(8)))
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"env-kwargs": {"model_path": str(tiny_dir), "marker": str(tmp_path / "killed")}}))
    train(load_config([
        "--config", str(config), "--env", "tests.engines.kill_worker_env:test/KillWorker-v0", "--hf-checkpoint", str(tiny_dir),
        "--prompt-data", str(data), "--no-bf16", "--rollout-batch-size", "4", "--n-samples-per-prompt", "2",
        "--rollout-max-response-len", "16", "--num-rollout", "3", "--lr", "1e-3", "--output-dir", str(out),
        "--rollout-num-engines", "2", "--router-policy", "round_robin",
    ]))
    assert (tmp_path / "killed").is_file()
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["weight_version"] for s in steps] == [1, 2, 3]
    for step, metrics in enumerate(steps, 1):
        records = [json.loads(line) for line in (out / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines()]
        # an episode ends whole (done, or its turn ran out of tokens) or aborted, and aborted ones are not trained on
        assert {r["termination"] for r in records} <= {"done", "length", "abort"}
        assert metrics["rollout/excluded"] == sum(r["termination"] == "abort" for r in records)
    assert sum("launching" in line or "ready at" in line for log in (out / "engines").glob("engine-*.log")
               for line in log.read_text().splitlines()) >= 3  # two launches and one relaunch
