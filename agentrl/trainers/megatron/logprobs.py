"""Log-probs and entropy of chosen tokens over a vocabulary sharded across tensor-parallel ranks.

Each rank holds rows ``[start, start + V_r)`` of the output layer (the last shard may hold
padding rows past the real vocabulary; they are cut off before the matmul, so padding never
enters a softmax). Positions are processed in chunks; under autograd each chunk is
checkpointed, so backward recomputes one chunk's ``[chunk, V_r]`` logits at a time.

Per chunk, with ``z = logits / temperature`` (fp32): ``m = max z`` and ``S = sum exp(z - m)``
are all-reduced (max, sum) over the tensor-parallel group, as is the chosen token's ``z_t``
(only its owner contributes it); ``log p_t = z_t - m - log S`` and
``entropy = m + log S - sum(p z)``. The gradient is analytic: ``d log p_t / dz = onehot_t - p``
and ``d entropy / dz = -p (z - sum(p z))``. With one rank this is ``log_softmax`` and its
entropy, as :func:`agentrl.trainers.logprobs.chosen_logprobs` computes them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from agentrl.trainers.logprobs import DEFAULT_CHUNK, in_chunks


def _all_reduce(tensor: Tensor, group: dist.ProcessGroup | None, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    if group is not None:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


class _ShardedLogSoftmax(torch.autograd.Function):
    """``(log p_t [n], entropy [n])`` of sharded logits ``[n, V_r]``; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, targets: Tensor, start: int, with_entropy: bool, group: dist.ProcessGroup | None) -> tuple[Tensor, Tensor]:
        n, width = z.shape
        m = z.amax(-1) if width else z.new_full((n,), float("-inf"))
        m = _all_reduce(m, group, dist.ReduceOp.MAX)
        e = torch.exp(z - m[:, None])
        s = _all_reduce(e.sum(-1), group)
        local = targets - start
        mine = (local >= 0) & (local < width)
        picked = z.gather(-1, local.clamp(0, width - 1)[:, None]).squeeze(-1) if width else torch.zeros_like(m)
        chosen = torch.where(mine, picked, 0.0)
        log_z = m + torch.log(s)
        p = e / s[:, None]
        expected = _all_reduce((p * z).sum(-1), group) if with_entropy else z.new_zeros(0)
        ctx.save_for_backward(p, z if with_entropy else z.new_zeros(0), local, mine, expected)
        ctx.with_entropy = with_entropy
        logp = _all_reduce(chosen, group) - log_z
        return logp, (log_z - expected if with_entropy else z.new_zeros(0))

    @staticmethod
    def backward(ctx: Any, grad_logp: Tensor, grad_entropy: Tensor) -> tuple[Tensor | None, ...]:
        p, z, local, mine, expected = ctx.saved_tensors
        grad = -p * grad_logp[:, None]
        if grad.shape[1]:  # onehot_t on the owner's shard; a masked scatter, as indexing by mine.nonzero() would wait on the GPU
            grad.scatter_add_(1, local.clamp(0, grad.shape[1] - 1)[:, None], torch.where(mine, grad_logp, 0.0)[:, None])
        if ctx.with_entropy:
            grad -= p * (z - expected[:, None]) * grad_entropy[:, None]
        return grad, None, None, None, None


def sharded_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    vocab_start: int,
    vocab_size: int,
    group: dist.ProcessGroup | None,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
) -> tuple[Tensor, Tensor | None]:
    """Log-prob of ``targets[i]`` under ``softmax(hidden[i] @ W.T / temperature)`` over the real
    vocabulary, ``W`` sharded by rows across ``group``.

    Args:
        hidden: ``[N, H]`` hidden states at the predicting positions (the same on every rank).
        weight: ``[V_r, H]`` this rank's output rows, vocabulary ``[vocab_start, vocab_start + V_r)``.
        targets: ``[N]`` token ids (global).
        vocab_start: the first vocabulary row this rank holds.
        vocab_size: the real vocabulary; rows at or past it are padding and are ignored.
        group: the tensor-parallel group, ``None`` for a single rank.
        temperature: the rollout temperature.
        with_entropy: also return the entropy of each position's distribution.
        chunk_size: positions per chunk.

    Returns:
        ``(logprobs [N], entropy [N] or None)``, fp32, identical on every rank of ``group``.
    """
    rows = max(0, min(weight.shape[0], vocab_size - vocab_start))
    weight = weight[:rows]

    def chunk(h: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        z = F.linear(h, weight).float()
        if temperature != 1.0:
            z = z / temperature
        out: tuple[Tensor, Tensor] = _ShardedLogSoftmax.apply(z, t, vocab_start, with_entropy, group)  # type: ignore[no-untyped-call]
        return out

    return in_chunks(chunk, hidden, targets, chunk_size=chunk_size, with_entropy=with_entropy)
