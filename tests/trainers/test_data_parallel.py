"""Data parallel: two ranks on halves of a batch make the same update as one rank on all of it.

Real ``torch.distributed`` processes started by ``torch.distributed.run``: gloo on CPU (runs on
CI), NCCL on two GPUs (marked ``gpu``). Gradients are compared before the optimizer step (Adam's
first step is nearly sign(grad), so comparing weights alone would hide a mis-scaled gradient),
then the weight updates, on average: where a gradient is ~eps, Adam turns rounding-level
differences into visible ones in single elements.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("data_parallel_worker.py")


def _run(ranks: int, model_dir: Path, out: Path, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
           str(WORKER), "--model-dir", str(model_dir), "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out)


def _max_rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
def test_two_gloo_ranks_equal_one(tiny_model_dir, tmp_path, per_token):
    extra = ["--device", "cpu"] + (["--per-token"] if per_token else [])
    single = _run(1, tiny_model_dir, tmp_path / "single.pt", *extra)
    double = _run(2, tiny_model_dir, tmp_path / "double.pt", *extra)
    assert _max_rel_diff(double["grads"], single["grads"]) < 1e-5
    assert _mean_update_diff(double["weights"], single["weights"], tiny_model_dir) < 1e-4
    assert any(float(g.abs().max()) > 0 for g in single["grads"].values())


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_nccl_ranks_equal_one_in_bf16(tiny_model_dir, tmp_path):
    single = _run(1, tiny_model_dir, tmp_path / "single.pt", "--device", "cuda", "--bf16")
    double = _run(2, tiny_model_dir, tmp_path / "double.pt", "--device", "cuda", "--bf16")
    grad_diff = _max_rel_diff(double["grads"], single["grads"])
    update_diff = _mean_update_diff(double["weights"], single["weights"], tiny_model_dir)
    print(f"NCCL DP=2 vs 1 in bf16: max relative grad diff {grad_diff:.2e}, mean relative update diff {update_diff:.2e}")
    assert grad_diff < 2e-2
    assert update_diff < 2e-2


def _mean_update_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], model_dir: Path) -> float:
    """Mean |update_a - update_b| over mean |update_b|, updates taken from the saved initial weights."""
    from transformers import AutoModelForCausalLM

    start = {n: p.detach().float() for n, p in AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).named_parameters()}
    diff = sum(float(((a[k] - start[k]) - (b[k] - start[k])).abs().sum()) for k in b)
    size = sum(float((b[k] - start[k]).abs().sum()) for k in b)
    return diff / size
