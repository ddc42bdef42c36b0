"""Attention for packed rows without a ``[T, T]`` mask.

Packed micro-batches hold several sequences in one row, separated by position ids restarting
at 0. Stock SDPA attention turns that into a dense block-diagonal ``[T, T]`` mask and computes
every block, wanted or not. This attention function computes only the causal block of each
sequence: on CUDA in half precision with PyTorch's variable-length flash attention
(:func:`torch.nn.attention.varlen.varlen_attn`, one kernel for the whole row); elsewhere it
gathers the sequences into a padded batch for one causal SDPA call (a loop of per-sequence
calls costs a full-row gradient buffer per sequence in backward, quadratic in the count). It is registered with transformers under
:data:`PACKED_ATTENTION`.

The row's structure comes as keyword arguments computed once per micro-batch (so no layer reads
anything back from the device): transformers' flash-attention ``cu_seq_lens_q`` (``[R + 1]``
int32 offsets of the row's runs) and ``max_length_q``, and an :class:`AttentionLayout`. Runs of
one GRPO group may share a single copy of their prompt (see
:func:`agentrl.trainers.batching.collate`); such rows take the padded path with a mask.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

PACKED_ATTENTION = "agentrl_packed"
MATH_ATTENTION_MAX_SCORES = 2**24
"""Largest ``[R, H, Lq, Lk]`` the CPU matmul path takes; bigger ones go to SDPA. That path keeps
each layer's fp32 scores and probabilities for backward (~200 MB a layer at this size); at 2**26,
SmolLM2's 30 layers on 4-turn Search-R1 micro-batches of 8k tokens ran a 23 GB machine out of memory."""
"""On CPU, attention scores up to this many elements are computed as plain matmuls (faster than
SDPA's CPU backward for short rows); larger ones go through memory-efficient SDPA."""


def cumulative_lengths(lengths: list[int], device: torch.device | str) -> Tensor:
    """``[0, l0, l0 + l1, ...]`` as int32 on ``device``: the sequence offsets flash kernels take."""
    offsets = [0]
    for length in lengths:
        offsets.append(offsets[-1] + length)
    return torch.tensor(offsets, dtype=torch.int32, device=device)


@dataclass
class AttentionLayout:
    """Which positions of a packed row each query attends to, as padded gather indices.

    The row holds ``R`` runs of tokens. Run ``r`` occupies ``[start_r, end_r)`` and may extend a
    *prefix*: a range of another run's tokens that its tokens attend to before their own (a group's
    samples share one copy of their prompt). A query at offset ``i`` of run ``r`` sees the whole
    prefix and offsets ``0..i`` of its own run.

    Attributes:
        query_index: ``[R, Lq]`` row positions of each run's tokens (0 in padding slots).
        key_index: ``[R, Lk]`` row positions of each run's keys: its prefix, then itself.
        lengths: ``[R]`` tokens of each run.
        prefix_lengths: ``[R]`` prefix tokens of each run (0 for none).
        real_queries: ``[R * Lq]`` which query slots are tokens, in row order.
        shares_prefixes: whether any run has a prefix (if not, ``cu_seq_lens`` describes it all).
    """

    query_index: Tensor
    key_index: Tensor
    lengths: Tensor
    prefix_lengths: Tensor
    real_queries: Tensor
    shares_prefixes: bool

    def to(self, device: torch.device | str) -> AttentionLayout:
        return AttentionLayout(self.query_index.to(device), self.key_index.to(device), self.lengths.to(device),
                               self.prefix_lengths.to(device), self.real_queries.to(device), self.shares_prefixes)

    @functools.cached_property
    def visible(self) -> Tensor:
        """``[R, 1, Lq, Lk]``: whether a query slot may attend to a key slot, built once on the
        layout's device when a path needs it (padding queries see key 0, so their softmax is defined)."""
        device = self.query_index.device
        q = torch.arange(self.query_index.shape[1], device=device)[None, :, None]
        k = torch.arange(self.key_index.shape[1], device=device)[None, None, :]
        prefix, length = self.prefix_lengths[:, None, None], self.lengths[:, None, None]
        own = k - prefix
        seen = (k < prefix) | ((own >= 0) & (own <= q))
        return torch.where(q < length, seen, k == 0).unsqueeze(1)


def attention_layout(runs: list[tuple[int, int]], prefixes: list[tuple[int, int]]) -> AttentionLayout:
    """The layout of runs ``[(start, end), ...]`` with prefixes ``[(prefix_start, prefix_len), ...]``
    (``prefix_len`` 0 for none), on CPU."""
    lengths = [end - start for start, end in runs]
    q_len = max(lengths, default=1)
    k_len = max((n + p for n, (_, p) in zip(lengths, prefixes)), default=1)
    query_index = torch.zeros(len(runs), q_len, dtype=torch.long)
    key_index = torch.zeros(len(runs), k_len, dtype=torch.long)
    for r, ((start, end), (p_start, p_len)) in enumerate(zip(runs, prefixes)):
        query_index[r, : end - start] = torch.arange(start, end)
        key_index[r, :p_len] = torch.arange(p_start, p_start + p_len)
        key_index[r, p_len : p_len + end - start] = torch.arange(start, end)
    length_t = torch.tensor(lengths, dtype=torch.long)
    real = (torch.arange(q_len) < length_t[:, None]).flatten()
    prefix_t = torch.tensor([p for _, p in prefixes], dtype=torch.long)
    return AttentionLayout(query_index, key_index, length_t, prefix_t, real, bool(prefix_t.any()))


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
    attention_layout: AttentionLayout | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Causal attention per packed run (see :class:`AttentionLayout`). ``query`` is
    ``[1, H, T, D]``, ``key``/``value`` ``[1, H_kv, T, D]``; returns ``[1, T, H, D]`` as
    transformers' attention functions do."""
    if query.shape[0] != 1 or cu_seq_lens_q is None or max_length_q is None or attention_layout is None or attention_mask is not None:
        raise ValueError(f"{PACKED_ATTENTION} attention takes one packed row with cu_seq_lens_q, max_length_q and attention_layout, and no attention mask")
    dropout = dropout if module.training else 0.0
    if query.is_cuda and torch.is_autocast_enabled("cuda"):  # q/k norms (Qwen3) hand back fp32 under autocast
        dtype = torch.get_autocast_dtype("cuda")
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if not attention_layout.shares_prefixes and _can_use_varlen(query, dropout, scaling):
        return _varlen_attention(query, key, value, cu_seq_lens_q, max_length_q, scaling), None
    return _padded_attention(query, key, value, attention_layout, scaling, dropout), None


def _padded_attention(query: Tensor, key: Tensor, value: Tensor, layout: AttentionLayout, scaling: float | None, dropout: float) -> Tensor:
    """Gather each run's queries and keys (prefix first) into padded batches, run one masked
    SDPA call and put the real queries back in row order; the gathers' backward is one scatter
    each (a loop of per-run calls costs a full-row gradient buffer per run in backward)."""
    def gather(t: Tensor, index: Tensor) -> Tensor:  # [1, H, T, D] -> [R, H, L, D]
        return cast(Tensor, t[0].index_select(1, index.flatten()).unflatten(1, index.shape)).transpose(0, 1)

    q, k, v = gather(query, layout.query_index), gather(key, layout.key_index), gather(value, layout.key_index)
    scores = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    if query.device.type == "cpu" and not dropout and scores <= MATH_ATTENTION_MAX_SCORES:
        out = _math_attention(q, k, v, layout, scaling)  # CPU SDPA's backward is slow for many short rows
    else:
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=layout.visible if layout.shares_prefixes else None, is_causal=not layout.shares_prefixes,
            scale=scaling, dropout_p=dropout, enable_gqa=query.shape[1] != key.shape[1],
        )
    out = out.to(query.dtype).transpose(1, 2).flatten(0, 1)  # [R * Lq, H, D]
    return out[layout.real_queries].unsqueeze(0)


def _math_attention(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout, scaling: float | None) -> Tensor:
    """Masked attention as matmuls in the inputs' dtype with an fp32 softmax; ``[R, H, Lq, D]``."""
    if k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    scores = (q @ k.transpose(-1, -2)).float() * (scaling if scaling is not None else q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~layout.visible, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


def varlen_available() -> bool:
    """Whether this PyTorch has :func:`torch.nn.attention.varlen.varlen_attn` and a CUDA device."""
    return _VARLEN is not None and torch.cuda.is_available()


def _can_use_varlen(query: Tensor, dropout: float, scaling: float | None) -> bool:
    found = _VARLEN
    if found is None or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16) or dropout:
        return False
    default_scale = scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-9
    return default_scale or "scale" in found[1]


def _varlen_attention(query: Tensor, key: Tensor, value: Tensor, cu: Tensor, max_len: int, scaling: float | None) -> Tensor:
    varlen, params = _VARLEN  # type: ignore[misc]
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
    return cast(Tensor, out).unsqueeze(0)  # [1, T, H, D]


def _find_varlen() -> tuple[Any, frozenset[str]] | None:
    """PyTorch's variable-length flash attention and its keyword names, or None where absent."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


_VARLEN = _find_varlen()
"""Looked up once at import (a constant, which ``torch.compile`` traces through without a cache wrapper)."""


AttentionInterface.register(PACKED_ATTENTION, packed_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_ATTENTION, flash_attention_mask)  # no mask when fully causal
