"""Log-probs of chosen tokens without materialising ``[tokens, vocab]`` logits at once.

The decoder's hidden states are computed once; the LM head, the temperature scaling and the
log-softmax run over chunks of positions. Under autograd each chunk is checkpointed, so the
backward pass recomputes one chunk's logits at a time instead of keeping all of them.

The distribution is the engine's (see :mod:`agentrl.policies.base`): ``log_softmax(logits /
temperature)`` in fp32, before any top-k / top-p truncation. Under bf16 autocast the LM head's
matmul runs in bf16, as the engine's does; the softmax is always fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from agentrl.trainers.packed_attention import AttentionLayout  # importing it registers the attention

DEFAULT_CHUNK = 1024


class PackedDecoder(nn.Module):
    """The decoder of a causal LM (loaded with :data:`PACKED_ATTENTION`) run on packed rows.

    ``forward(input_ids [1, T], position_ids [1, T], cu_seq_lens [R + 1], max_length, layout)``
    returns the final hidden states ``[T, H]``; each run of tokens attends as ``layout`` says
    (itself causally, after a shared prompt if it has one). The LM head runs outside it, chunk
    by chunk.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, position_ids: Tensor, cu_seq_lens: Tensor, max_length: int, layout: AttentionLayout) -> Tensor:
        decoder: nn.Module = self.model.get_decoder()  # type: ignore[operator]  # an HF model's method, typed by nn.Module as Tensor | Module
        out = decoder(
            input_ids=input_ids, position_ids=position_ids, use_cache=False, attention_layout=layout,
            cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, max_length_q=max_length, max_length_k=max_length,
        )
        hidden: Tensor = out.last_hidden_state[0]
        return hidden


def chosen_logprobs(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets[i]`` under ``softmax(lm_head(hidden[i]) / temperature)``.

    Args:
        hidden: ``[N, H]`` hidden states at the predicting positions.
        lm_head: the output projection.
        targets: ``[N]`` token ids.
        temperature: the rollout temperature (1.0 for none).
        with_entropy: also return the per-position entropy of the same distribution.
        chunk_size: positions per chunk.

    Returns:
        ``(logprobs [N], entropy [N] or None)``, fp32.
    """

    def fn(h: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return _chunk(lm_head, h, t, temperature, with_entropy)

    return in_chunks(fn, hidden, targets, chunk_size=chunk_size, with_entropy=with_entropy)


def in_chunks(
    fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], hidden: Tensor, targets: Tensor, *, chunk_size: int, with_entropy: bool
) -> tuple[Tensor, Tensor | None]:
    """``fn(hidden_chunk, targets_chunk) -> (logprobs, entropy)`` over ``chunk_size`` rows at a
    time, concatenated; with gradients on, each chunk is recomputed in backward instead of keeping
    its ``[chunk, vocab]`` logits. Returns ``(logprobs [N], entropy [N] or None)``, fp32."""
    logps: list[Tensor] = []
    entropies: list[Tensor] = []
    for start in range(0, hidden.shape[0], chunk_size):
        args = (hidden[start : start + chunk_size], targets[start : start + chunk_size])
        logp, entropy = checkpoint(fn, *args, use_reentrant=False) if torch.is_grad_enabled() else fn(*args)
        logps.append(logp)
        entropies.append(entropy)
    if not logps:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(logps), (torch.cat(entropies) if with_entropy else None)


def _chunk(lm_head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float, with_entropy: bool) -> tuple[Tensor, Tensor]:
    logits = lm_head(hidden).float()  # under autocast the matmul runs in bf16; the softmax in fp32
    if temperature != 1.0:
        logits = logits / temperature
    log_probs = torch.log_softmax(logits, dim=-1)
    chosen = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1) if with_entropy else chosen.new_zeros(0)
    return chosen, entropy
