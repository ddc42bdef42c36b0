"""The Megatron model computes what the Hugging Face model computes: logits of packed rows (shared
prompts included) equal the HF model's on each sequence alone (fp32, 1e-5), and the vocab-parallel
log-probs and entropy equal ``log_softmax`` of those logits at any temperature."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.batching import collate
from agentrl.trainers.megatron.forward import decoder_output, head_logprobs, pad_row
from agentrl.trainers.megatron.logprobs import sharded_logprobs
from agentrl.trainers.megatron.mcore import running
from agentrl.trainers.torch_trainer import TrainerConfig
from tests.trainers.megatron.megatron_cases import VOCAB, make_sequences


def hf_logits(model_dir, sequences) -> list[torch.Tensor]:
    """Each sequence alone through the HF model: logits ``[L, V]``."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(input_ids=torch.tensor([s.token_ids])).logits[0] for s in sequences]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("share_prompts", [False, True], ids=["own_prompts", "shared_prompts"])
def test_megatron_logits_of_a_packed_row_equal_the_hf_models(model_dirs, megatron_trainer, kind, share_prompts):
    sequences = make_sequences(6, group=3)
    trainer = megatron_trainer(model_dirs[kind], TrainerConfig(bf16=False), LossConfig())
    batch = collate(sequences, share_prompts=share_prompts)
    assert batch.layout.shares_prefixes == share_prompts
    with torch.no_grad(), running(trainer.device):
        hidden = decoder_output(trainer.model, pad_row(batch, 8))[: batch.num_tokens, 0]  # padding appended, never read
        weight = trainer.model.shared_embedding_or_output_weight() if trainer.tied else trainer.model.output_layer.weight
        logits = hidden[batch.pred_index] @ weight[:VOCAB].T  # [N, V] at every position that predicts a response token
    expected = torch.cat([h[s.prompt_len - 1 : -1] for s, h in zip(sequences, hf_logits(model_dirs[kind], sequences))])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_rotary_embedding_takes_no_per_run_path(model_dirs, megatron_trainer, monkeypatch):
    """The packed row reaches Megatron as one sbhd sequence: Megatron's thd RoPE reads every run's
    offset to the host (a GPU sync per run, in every layer) and must not run."""
    from megatron.core.models.common.embeddings import rope_utils

    def refuse(*args, **kwargs):
        raise AssertionError("Megatron's per-run thd RoPE ran")

    monkeypatch.setattr(rope_utils, "_apply_rotary_pos_emb_thd", refuse)
    trainer = megatron_trainer(model_dirs["qwen3"], TrainerConfig(bf16=False), LossConfig())
    with torch.no_grad(), running(trainer.device):
        hidden = decoder_output(trainer.model, collate(make_sequences(4, group=2), share_prompts=True))
    assert torch.isfinite(hidden).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vocab_parallel_logprobs_and_entropy_equal_log_softmax(temperature):
    torch.manual_seed(0)
    hidden, weight = torch.randn(37, 16, requires_grad=True), torch.randn(512, 16, requires_grad=True)
    targets = torch.randint(0, VOCAB, (37,))
    logp, entropy = sharded_logprobs(hidden, weight, targets, vocab_start=0, vocab_size=VOCAB, group=None,
                                     temperature=temperature, with_entropy=True, chunk_size=8)
    reference = torch.log_softmax(hidden @ weight[:VOCAB].T / temperature, dim=-1)
    expected_logp, expected_entropy = reference.gather(-1, targets[:, None])[:, 0], -(reference.exp() * reference).sum(-1)
    torch.testing.assert_close(logp, expected_logp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad((logp * torch.linspace(-1, 1, 37)).sum() + entropy.sum() / 3, (hidden, weight))
    expected_grads = torch.autograd.grad((expected_logp * torch.linspace(-1, 1, 37)).sum() + expected_entropy.sum() / 3, (hidden, weight))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not grads[1][VOCAB:].any()  # padding rows never enter the softmax


def test_log_probs_need_the_rollout_temperature(model_dirs, megatron_trainer):
    sequences = make_sequences(4)
    trainer = megatron_trainer(model_dirs["llama"], TrainerConfig(bf16=False, temperature=0.6), LossConfig())
    batch = collate(sequences)
    with torch.no_grad(), running(trainer.device):
        hidden = decoder_output(trainer.model, batch)
        hot, _ = head_logprobs(trainer.model, hidden, batch, vocab_size=VOCAB, temperature=0.6)
        plain, _ = head_logprobs(trainer.model, hidden, batch, vocab_size=VOCAB, temperature=1.0)
    torch.testing.assert_close(torch.cat(trainer.logprobs(sequences)), hot)
    assert not torch.allclose(hot, plain)
