"""Tiny random models and GRPO batches shared by the Megatron tests and their worker processes
(imported as ``tests.trainers.megatron.megatron_cases`` by tests, by file path by workers)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.batching import TrainSequence
from agentrl.trainers.torch_trainer import TrainerConfig

VOCAB = 500  # not a multiple of 128: Megatron pads it (512 rows; at TP 2 the second shard holds 244 real rows)
SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256)
MODELS = {
    "llama": (LlamaForCausalLM, LlamaConfig(**SHAPE)),  # separate lm_head
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**SHAPE)),  # q/k/v biases
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**SHAPE, head_dim=24, tie_word_embeddings=True)),  # q/k norms, head_dim != hidden / heads, tied
}
CONFIG = TrainerConfig(lr=1e-3, bf16=False, num_steps_per_rollout=2, use_dynamic_batch_size=True, max_tokens_per_gpu=48,
                       lr_warmup_iters=1, lr_decay_style="cosine", lr_decay_iters=3, min_lr=1e-4, clip_grad=0.5)
"""Two optimizer steps per rollout (the second off-policy), warmup then cosine decay, clipping: fp32."""
LOSS = LossConfig(eps_clip_high=0.28, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="low_var_kl", entropy_coef=0.01, use_tis=True)
"""Every term of the loss: clipped ratio, KL to the reference, entropy bonus, TIS."""


def save_tiny_model(kind: str, path: Path, *, dtype: torch.dtype = torch.float32) -> Path:
    """A randomly initialised ``kind`` model (seeded) saved as a Hugging Face directory."""
    model_class, config = MODELS[kind]
    torch.manual_seed(0)
    model = model_class(config).to(dtype)
    with torch.no_grad():  # random norm weights and biases, so a transposed or swapped one shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(path)
    return path


def make_sequences(n: int, *, group: int = 4, seed: int = 0) -> list[TrainSequence]:
    """``n`` samples, each run of ``group`` sharing its prompt (a GRPO group); about 1 in 6 masked
    response tokens, one group of zero advantages (dropped from the loss without KL/entropy)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % group == 0:
            prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(3, 12))]
        response = [rng.randrange(VOCAB) for _ in range(rng.randint(2, 14))]
        mask = [1 if rng.random() < 0.85 else 0 for _ in response]
        mask[0] = 1
        advantage = 0.0 if i // group == 1 else rng.uniform(-1.5, 1.5)
        logps = [-rng.random() * 3 for _ in response]
        out.append(TrainSequence(prompt + response, len(prompt), mask, logps, [advantage] * len(response), i))
    return out


def megatron_grads(trainer) -> dict[str, torch.Tensor]:
    """A Megatron trainer's accumulated gradients (kept in ``main_grad``) under Hugging Face names,
    gathered like its weights (every rank must call this)."""
    params = list(trainer.model.parameters())
    live = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.copy_(p.main_grad)
        grads = {name: t.clone() for name, t in trainer.named_weights()}
        for p, w in zip(params, live):
            p.copy_(w)
    return grads


def data_parallel_share(sequences: list[TrainSequence], samples: int, steps: int, rank: int, size: int) -> list[TrainSequence]:
    """Data-parallel rank ``rank``'s sequences, re-indexed from 0, such that its local optimizer
    step ``k`` (of ``steps`` per rollout) holds its part of the whole rollout's step ``k``."""
    per_step = samples // steps
    mine = per_step // size
    out = []
    for s in sequences:
        step, offset = divmod(s.sample_index, per_step)
        if offset // mine == rank:
            out.append(dataclasses.replace(s, sample_index=step * mine + offset % mine))
    return out
