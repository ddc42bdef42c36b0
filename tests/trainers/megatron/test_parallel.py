"""Megatron's parallelism over gloo on the CPU equals one rank: data parallel 2 (plain, with the
distributed optimizer, with the gradient reduction overlapped), tensor parallel 2 (with and
without sequence parallelism; Qwen3's q/k norms and tied embedding, Llama's separate output
layer, Qwen2's q/k/v biases), pipeline parallel 2 (tied and untied embeddings).

Two real ``torch.distributed`` ranks started once by ``torch.distributed.run`` run every mode of
``parallel_worker.MODES`` in turn; each is compared with the same rollout trained here on one
rank: the HF export (bit-exact at any size), log-probs, one step's gradients, a rollout's step
metrics and updated weights (fp32, 1e-5 relative). A checkpoint written at TP 2 loads at TP 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.trainers.megatron.megatron_cases import CONFIG, LOSS, make_sequences, megatron_grads
from tests.trainers.megatron.parallel_worker import MODES, SAMPLES

WORKER = Path(__file__).with_name("parallel_worker.py")
pytestmark = pytest.mark.slow  # one launch of two ranks runs every mode: about a minute on two cores


@pytest.fixture(scope="module")
def two_ranks(model_dirs, tmp_path_factory) -> Path:
    """The worker's outputs, one file per mode."""
    out = tmp_path_factory.mktemp("parallel")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           "--model-dirs", json.dumps({k: str(v) for k, v in model_dirs.items()}), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return out


@pytest.fixture(scope="module")
def one_rank(model_dirs):
    """``kind -> (logprobs, one step's gradients, metrics, weights after, weights before)`` of the
    same rollout on one rank."""
    from agentrl.trainers.megatron.trainer import MegatronTrainer

    results = {}
    for kind in sorted({kind for kind, _ in MODES.values()}):
        trainer = MegatronTrainer(model_dirs[kind], CONFIG, LOSS)
        try:
            before = {k: v.clone() for k, v in trainer.named_weights()}
            sequences = make_sequences(SAMPLES)
            logprobs = trainer.logprobs(sequences)
            trainer.accumulate_gradients(sequences, ref=trainer.reference_logprobs(sequences))
            grads = megatron_grads(trainer)
            trainer.ddp.zero_grad_buffer()
            metrics = trainer.train_rollout(sequences, SAMPLES)
            results[kind] = (logprobs, grads, metrics, {k: v.clone() for k, v in trainer.named_weights()}, before)
        finally:
            trainer.close()
    return results


def hf_state(model_dir) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).state_dict()


@pytest.mark.parametrize("mode", list(MODES))
def test_two_gloo_ranks_equal_one(two_ranks, one_rank, model_dirs, mode):
    kind, _ = MODES[mode]
    got = torch.load(two_ranks / f"{mode}.pt")
    logprobs, grads, metrics, weights, start = one_rank[kind]
    expected = hf_state(model_dirs[kind])
    assert sorted(got["exported"]) == sorted(expected)
    assert all(torch.equal(got["exported"][k], v) for k, v in expected.items())  # HF -> Megatron (sharded) -> HF
    for a, b in zip(got["logprobs"], logprobs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if mode != "dp_distributed_optimizer":  # which reduce-scatters: each rank holds the summed gradient of its shard only
        assert all(float((got["grads"][k] - g).norm() / g.norm()) < 1e-5 for k, g in grads.items() if g.any())
    skip = {"train/tokens"} if mode.startswith("dp") else set()  # data-parallel shares pack their own micro-batches
    for k, v in metrics.items():
        if not k.startswith("perf/") and k not in skip:
            assert got["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
    moved = sum(float((weights[k] - start[k]).abs().sum()) for k in weights)
    assert moved > 0
    assert sum(float((got["weights"][k] - weights[k]).abs().sum()) for k in weights) / moved < 1e-5
    assert all(float((got["weights"][k] - v).norm() / v.norm()) < 1e-5 for k, v in weights.items())


def test_a_tensor_parallel_checkpoint_loads_on_one_rank(two_ranks, model_dirs, megatron_trainer):
    trainer = megatron_trainer(model_dirs["qwen3"], CONFIG, LOSS)
    trainer.load_checkpoint(two_ranks / "tp_checkpoint")
    saved = torch.load(two_ranks / "tp.pt")["weights"]
    assert trainer.steps == 2
    assert all(torch.equal(saved[k], v) for k, v in trainer.named_weights())


def test_cpu_mode_still_needs_tensor_cuda_for_a_pipeline_with_tied_embeddings(two_ranks):
    error = torch.load(two_ranks / "pp_without_tensor_cuda.pt")["error"]
    assert error is not None, "a tied-embedding pipeline ran without cpu_mode's tensor_cuda redirection: remove it from cpu_mode"
    assert "CUDA" in error
