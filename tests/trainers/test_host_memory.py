"""Freed host memory goes back to the OS after a CPU training step (glibc's ``malloc_trim``)."""

from __future__ import annotations

import sys

import pytest
import torch

from agentrl.trainers import host_memory
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig
from tests.trainers.megatron.megatron_cases import make_sequences


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_memory_freed_in_small_blocks_is_returned():
    blocks = [torch.ones(4096) for _ in range(20_000)]  # ~330 MB in 16 KB blocks: served from the heap, not mmap
    del blocks
    assert host_memory.release_freed_memory()


def test_a_cpu_training_step_releases_freed_memory(tiny_model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr("agentrl.trainers.torch_trainer.release_freed_memory", lambda: calls.append(1) or True)
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, num_steps_per_rollout=2), LossConfig(), device="cpu")
    trainer.train_rollout(make_sequences(8, group=2), 8)
    assert calls == [1]  # once per rollout, after its optimizer steps
