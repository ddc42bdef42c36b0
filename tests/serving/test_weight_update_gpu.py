"""Weight sync on GPUs (marked ``gpu``): ``bench/weight_sync_gpu.py`` on a tiny Qwen3 in fp32,
trainer on ``cuda:0`` and ``agentrl serve --device cuda``: disk, and NCCL between two GPUs (gloo
through the CPU where there is one). Every push must land: the engine's log-probs are those of
the pushed weights, far from those of the weights before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[2] / "bench" / "weight_sync_gpu.py"


@pytest.mark.gpu
def test_weight_sync_to_a_cuda_engine_lands_every_push():
    cmd = [sys.executable, str(BENCH), "--shape", "tiny", "--pushes", "2", "--bucket-mb", "1", "--engine-dtype", "float32",
           "--wire-dtype", "float32", "--max-logprob-diff", "1e-3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    group = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    assert set(result["results"]) == {"disk", group}
    for transport in result["results"].values():
        assert transport["max_logprob_diff"] < 1e-3 < 10 * 1e-3 < transport["min_logprob_diff_vs_previous"]
