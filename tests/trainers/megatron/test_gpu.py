"""The Megatron trainer on one CUDA GPU (marked ``gpu``: skipped where there is none, as on CI):
fp32 updates equal the PyTorch backend's there too, and in bf16 the packed rows without shared
prompts take PyTorch's variable-length flash attention, with log-probs near the PyTorch backend's."""

from __future__ import annotations

import pytest
import torch

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.packed_attention import varlen_available
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig
from tests.trainers.megatron.megatron_cases import CONFIG, LOSS, make_sequences

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_two_grpo_steps_on_a_gpu_match_the_torch_backend(model_dirs, megatron_trainer, kind):
    sequences = make_sequences(12)
    reference = TorchTrainer(model_dirs[kind], CONFIG, LOSS, device="cuda")
    trainer = megatron_trainer(model_dirs[kind], CONFIG, LOSS, device="cuda")
    got, want = trainer.train_rollout(sequences, 12), reference.train_rollout(sequences, 12)
    for k, v in want.items():
        if not k.startswith("perf/"):
            assert got[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    weights = dict(trainer.named_weights())
    for name, w in reference.named_weights():
        assert float((weights[name].float() - w).norm() / w.norm()) < 1e-4, name


@pytest.mark.skipif(not varlen_available(), reason="this PyTorch has no torch.nn.attention.varlen")
def test_bf16_packed_rows_take_varlen_attention_and_stay_near_the_torch_backend(model_dirs, megatron_trainer, monkeypatch):
    from agentrl.trainers import packed_attention

    calls = []
    original = packed_attention._varlen_attention
    monkeypatch.setattr(packed_attention, "_varlen_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    sequences = make_sequences(8, group=1)  # every sample its own prompt: no shared prefixes
    config = TrainerConfig(bf16=True, lr=1e-4)
    trainer = megatron_trainer(model_dirs["qwen3"], config, LossConfig(), device="cuda")
    got = torch.cat(trainer.logprobs(sequences))
    assert calls, "the Megatron backend's attention did not take the varlen path"
    want = torch.cat(TorchTrainer(model_dirs["qwen3"], config, LossConfig(), device="cuda").logprobs(sequences))
    assert float((got - want).abs().mean()) < 2e-2
    assert trainer.train_rollout(sequences, 8)["train/grad_norm"] > 0
