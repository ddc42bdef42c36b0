"""Attention for packed rows without a ``[T, T]`` mask.

Packed micro-batches hold several sequences in one row, separated by position ids restarting
at 0. Stock SDPA attention turns that into a dense block-diagonal ``[T, T]`` mask and computes
every block, wanted or not. This attention function computes only the causal block of each
sequence: on CUDA in half precision with PyTorch's variable-length flash attention
(:func:`torch.nn.attention.varlen.varlen_attn`, one kernel for the whole row); elsewhere it
gathers the sequences into a padded batch for one causal SDPA call (a loop of per-sequence
calls costs a full-row gradient buffer per sequence in backward, quadratic in the count). It is registered with transformers under
:data:`PACKED_ATTENTION`.

The sequence boundaries come as transformers' flash-attention keyword arguments
``cu_seq_lens_q`` (``[N + 1]`` int32 offsets, on the model's device) and ``max_length_q``, which
:func:`agentrl.trainers.logprobs.hidden_states` computes once per micro-batch, so no layer reads
them back from the device.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

PACKED_ATTENTION = "agentrl_packed"


def cumulative_lengths(lengths: list[int], device: torch.device | str) -> Tensor:
    """``[0, l0, l0 + l1, ...]`` as int32 on ``device``: the sequence offsets flash kernels take."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def packed_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    cu_seq_lens_q: Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Causal attention per packed sequence. ``query`` is ``[1, H, T, D]``, ``key``/``value``
    ``[1, H_kv, T, D]``; returns ``[1, T, H, D]`` as transformers' attention functions do."""
    if query.shape[0] != 1 or cu_seq_lens_q is None or max_length_q is None or attention_mask is not None:
        raise ValueError(f"{PACKED_ATTENTION} attention takes one packed row with cu_seq_lens_q and max_length_q and no attention mask")
    dropout = dropout if module.training else 0.0
    if query.is_cuda and torch.is_autocast_enabled("cuda"):  # q/k norms (Qwen3) hand back fp32 under autocast
        dtype = torch.get_autocast_dtype("cuda")
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if _can_use_varlen(query, dropout, scaling):
        return _varlen_attention(query, key, value, cu_seq_lens_q, max_length_q, scaling), None
    return _padded_attention(query, key, value, cu_seq_lens_q, max_length_q, scaling, dropout), None


def _padded_attention(query: Tensor, key: Tensor, value: Tensor, cu: Tensor, max_len: int, scaling: float | None, dropout: float) -> Tensor:
    """Gather the row's sequences into a padded ``[S, H, max_len, D]`` batch, run one causal SDPA
    and gather the real positions back. Padding sits at the end of each sequence, so causal
    attention never lets a real position see it; the gathers' backward is one scatter each."""
    offsets = cu.to("cpu", torch.long)
    lengths = offsets[1:] - offsets[:-1]
    positions = torch.arange(max_len)
    real = positions < lengths[:, None]  # [S, L]
    index = torch.where(real, offsets[:-1, None] + positions, 0).flatten().to(query.device)

    # CPU SDPA's bf16 backward is several times slower than its fp32 one at these sizes
    dtype = torch.float32 if query.device.type == "cpu" else query.dtype

    def gather(t: Tensor) -> Tensor:  # [1, H, T, D] -> [S, H, L, D]
        return t[0].index_select(1, index).unflatten(1, real.shape).transpose(0, 1).to(dtype)

    out = nn.functional.scaled_dot_product_attention(
        gather(query), gather(key), gather(value),
        is_causal=True, scale=scaling, dropout_p=dropout, enable_gqa=query.shape[1] != key.shape[1],
    )
    out = out.to(query.dtype).transpose(1, 2).flatten(0, 1)  # [S * L, H, D]
    return out[real.flatten().to(query.device)].unsqueeze(0)


def varlen_available() -> bool:
    """Whether this PyTorch has :func:`torch.nn.attention.varlen.varlen_attn` and a CUDA device."""
    return _varlen() is not None and torch.cuda.is_available()


def _can_use_varlen(query: Tensor, dropout: float, scaling: float | None) -> bool:
    found = _varlen()
    if found is None or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16) or dropout:
        return False
    default_scale = scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-9
    return default_scale or "scale" in found[1]


def _varlen_attention(query: Tensor, key: Tensor, value: Tensor, cu: Tensor, max_len: int, scaling: float | None) -> Tensor:
    varlen, params = _varlen()  # type: ignore[misc]
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    options: dict[str, Any] = {"scale": scaling} if "scale" in params else {}
    if "window_size" in params:  # torch >= 2.11: causal is a (-1, 0) window
        options["window_size"] = (-1, 0)
    else:
        options["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    out = varlen(q, k, v, cu, cu, max_len, max_len, **options)
    return out.unsqueeze(0)  # [1, T, H, D]


@functools.cache
def _varlen() -> tuple[Any, frozenset[str]] | None:
    """PyTorch's variable-length flash attention and its keyword names, or None where absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, flash_attention_mask)  # no mask when fully causal
