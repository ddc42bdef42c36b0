"""Learning-rate schedules: warmup, then constant, linear or cosine decay to min-lr, as the
trainer's optimizer sees them step by step."""

from __future__ import annotations

import itertools
import math

import pytest

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.lr_schedule import learning_rate
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig


def test_warmup_is_linear_from_zero():
    assert [learning_rate(s, lr=1.0, min_lr=0.0, warmup=4, decay_iters=10, style="constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_linear_and_cosine_reach_min_lr_at_decay_iters_and_stay():
    for style in ("linear", "cosine"):
        values = [learning_rate(s, lr=1.0, min_lr=0.1, warmup=0, decay_iters=10, style=style) for s in range(14)]
        assert values[0] == 1.0 and values[10:] == [0.1] * 4
        assert all(a >= b for a, b in itertools.pairwise(values))
    assert learning_rate(5, lr=1.0, min_lr=0.0, warmup=0, decay_iters=10, style="linear") == 0.5
    assert learning_rate(5, lr=1.0, min_lr=0.0, warmup=0, decay_iters=10, style="cosine") == pytest.approx(0.5)
    assert learning_rate(2, lr=1.0, min_lr=0.0, warmup=0, decay_iters=10, style="cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_the_trainer_steps_its_optimizer_along_the_schedule(tiny_model_dir):
    config = TrainerConfig(lr=1e-3, bf16=False, lr_decay_style="linear", lr_warmup_iters=1, lr_decay_iters=3, min_lr=1e-4)
    trainer = TorchTrainer(tiny_model_dir, config, LossConfig())
    seen = [trainer.apply_gradients()["train/lr"] for _ in range(4)]
    assert seen == pytest.approx([1e-3, 1e-3, 5.5e-4, 1e-4])
