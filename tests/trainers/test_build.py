"""One builder for both trainer backends: the backend the name says, and one-line errors."""

from __future__ import annotations

import sys

import pytest

from agentrl.errors import ConfigError
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.build import build_trainer
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig

CONFIG = TrainerConfig(bf16=False)


def test_each_backend_name_builds_its_trainer(tiny_llama_dir):
    from agentrl.trainers.megatron.trainer import MegatronTrainer

    torch_trainer = build_trainer("torch", tiny_llama_dir, CONFIG, LossConfig(), device="cpu")
    megatron_trainer = build_trainer("megatron", tiny_llama_dir, CONFIG, LossConfig(), device="cpu", megatron=MegatronConfig(), seed=1)
    try:
        assert isinstance(torch_trainer, TorchTrainer) and isinstance(megatron_trainer, MegatronTrainer)
    finally:
        megatron_trainer.close()
        torch_trainer.close()


@pytest.mark.parametrize(("backend", "megatron", "message"), [
    ("fsdp", None, r"^--train-backend must be one of torch, megatron, got 'fsdp'$"),
    ("torch", MegatronConfig(), r"^Megatron settings were given to the torch trainer: pass --train-backend megatron$"),
])
def test_a_wrong_backend_is_refused(tiny_llama_dir, backend, megatron, message):
    with pytest.raises(ConfigError, match=message):
        build_trainer(backend, tiny_llama_dir, CONFIG, LossConfig(), device="cpu", megatron=megatron)


def test_megatron_without_megatron_core_names_the_extra(tiny_llama_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "agentrl.trainers.megatron.trainer", None)  # as its import of megatron.core fails without the package
    with pytest.raises(ConfigError, match=r"^--train-backend megatron needs Megatron-Core \(.*\): pip install 'agentrl\[megatron\]'$"):
        build_trainer("megatron", tiny_llama_dir, CONFIG, LossConfig(), device="cpu")
