"""CPU mode is exactly what Megatron-Core needs on a machine without CUDA: each redirection is still
needed (a workload fails without it) and together they are enough (every workload runs). A
Megatron-Core upgrade that changes either fails here, naming the redirection. The pipeline-only
``tensor_cuda`` redirection is checked by ``test_parallel.py`` (it needs two ranks)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.megatron import cpu_mode
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.mcore import MCORE_VERSION
from agentrl.trainers.megatron.trainer import MegatronTrainer
from agentrl.trainers.torch_trainer import TrainerConfig
from tests.trainers.megatron.megatron_cases import make_sequences

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the redirected calls work without CPU mode")
WORKLOADS = {
    "fp32_adam": (TrainerConfig(bf16=False, lr=1e-3), MegatronConfig()),
    "bf16_distributed_adam": (TrainerConfig(bf16=True, lr=1e-3), MegatronConfig(use_distributed_optimizer=True)),
}


def run_workload(model_dir, path, config: TrainerConfig, parallel: MegatronConfig) -> None:
    """Build, train a rollout, checkpoint and reload, export: everything the backend does."""
    with contextlib.closing(MegatronTrainer(model_dir, config, LossConfig(), parallel=parallel)) as trainer:
        trainer.train_rollout(make_sequences(4), 4)
        trainer.save_checkpoint(path)
        trainer.load_checkpoint(path)
        assert sum(1 for _ in trainer.named_weights())


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_the_redirections_together_are_enough(model_dirs, tmp_path, workload):
    run_workload(model_dirs["qwen3"], tmp_path / "ckpt", *WORKLOADS[workload])


@no_cuda
@pytest.mark.parametrize("redirection", sorted(cpu_mode.REDIRECTIONS - {"tensor_cuda"}))
def test_each_redirection_is_still_needed(model_dirs, tmp_path, monkeypatch, redirection):
    monkeypatch.setattr(cpu_mode, "REDIRECTIONS", cpu_mode.REDIRECTIONS - {redirection})
    failures = []
    for name, (config, parallel) in WORKLOADS.items():
        try:
            run_workload(model_dirs["qwen3"], tmp_path / name, config, parallel)
        except (AssertionError, TypeError, RuntimeError) as e:  # "Torch not compiled with CUDA", CUDA type checks
            failures.append(f"{name}: {type(e).__name__}: {e}")
    assert failures, f"cpu_mode's {redirection!r} redirection is no longer needed by megatron-core {MCORE_VERSION}: remove it"


def test_cpu_mode_nests_and_restores_torch_cuda():
    original = torch.cuda.current_device
    with cpu_mode.cpu_mode():
        with cpu_mode.cpu_mode():
            assert torch.cuda.current_device() == torch.device("cpu")
            assert torch.zeros(1, device="cuda").device.type == "cpu"
            assert torch.zeros(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        assert torch.cuda.current_device() == torch.device("cpu")
    assert torch.cuda.current_device is original
    assert torch.zeros(1).type() == "torch.FloatTensor"
