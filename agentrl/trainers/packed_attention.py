"""Attention for packed rows without a ``[T, T]`` mask.

Packed micro-batches hold several sequences in one row, separated by position ids restarting
at 0. Stock SDPA attention turns that into a dense block-diagonal ``[T, T]`` mask and computes
every block, wanted or not. This attention function runs causal SDPA on each sequence's block
alone: no mask is built, and the work is the sum of the sequences' squares instead of the square
of their sum. It is registered with transformers under :data:`PACKED_ATTENTION`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

PACKED_ATTENTION = "agentrl_packed"


def sequence_bounds(position_ids: Tensor) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the sequences in a packed row ``[1, T]``."""
    starts = (position_ids[0] == 0).nonzero().flatten().tolist()
    ends = starts[1:] + [position_ids.shape[1]]
    return list(zip(starts, ends))


def packed_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: Tensor | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Causal attention per packed sequence. ``query`` is ``[1, H, T, D]``, ``key``/``value``
    ``[1, H_kv, T, D]``; returns ``[1, T, H, D]`` as transformers' attention functions do."""
    if query.shape[0] != 1 or position_ids is None or attention_mask is not None:
        raise ValueError(f"{PACKED_ATTENTION} attention takes one packed row with position_ids and no attention mask")
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    for start, end in sequence_bounds(position_ids):
        out[:, :, start:end] = nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
            is_causal=True, scale=scaling, dropout_p=dropout if module.training else 0.0, enable_gqa=gqa,
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, flash_attention_mask)  # no mask when fully causal
