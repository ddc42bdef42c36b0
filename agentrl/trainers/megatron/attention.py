"""Core attention for packed micro-batches, plugged into Megatron-Core's local layer spec.

Megatron-Core's local ``DotProductAttention`` refuses packed sequences (it asserts
``packed_seq_params is None``: packing is Transformer Engine's job, and TE is not available).
:class:`PackedCoreAttention` takes its place in the layer spec and runs agentrl's packed
attention (:func:`agentrl.trainers.packed_attention.packed_attention`): PyTorch's variable-length
flash attention on CUDA in half precision, a padded causal SDPA/matmul elsewhere; never a padded
batch of the whole micro-batch.

A micro-batch is one row of ``T`` tokens holding several runs (see
:func:`agentrl.trainers.batching.collate`). Runs of one GRPO group may share a single copy of
their prompt; :class:`PackedRows` carries that layout next to Megatron's ``cu_seqlens``, so the
attention sees it. Rotary embeddings are applied by Megatron before this module, per token (the
trainer passes per-token frequencies, see :func:`agentrl.trainers.megatron.forward.decoder_output`).

To Megatron the row is one ``sbhd`` sequence of batch 1 (``[T, 1, ...]``), not ``thd``: with
``thd`` Megatron's unfused RoPE splits the row by run and reads every run's offset to the host
(``.tolist()``, ``.item()``), a device sync per run for queries and keys in every layer, which on
a GPU left the step waiting on the host. The per-token frequencies make the ``sbhd`` rotation exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from agentrl.trainers.batching import MicroBatch
from agentrl.trainers.megatron.mcore import AttnMaskType, MegatronModule, PackedSeqParams, TransformerConfig
from agentrl.trainers.packed_attention import AttentionLayout, packed_attention


@dataclass
class PackedRows(PackedSeqParams):  # type: ignore[misc]  # Megatron-Core is untyped
    """Megatron's packed-sequence parameters plus agentrl's :class:`AttentionLayout` of the row
    (``qkv_format`` ``sbhd``: see the module docstring).

    ``cu_seqlens_q``/``cu_seqlens_kv``: ``[R + 1]`` int32 offsets of the ``R`` runs;
    ``max_seqlen_q``/``max_seqlen_kv``: the longest run; ``layout``: what each run attends to.
    """

    layout: AttentionLayout | None = None

    @classmethod
    def of(cls, batch: MicroBatch) -> PackedRows:
        """The parameters of a collated micro-batch (tensors on the batch's device)."""
        return cls(qkv_format="sbhd", cu_seqlens_q=batch.cu_seq_lens, cu_seqlens_kv=batch.cu_seq_lens,
                   max_seqlen_q=batch.max_length, max_seqlen_kv=batch.max_length, layout=batch.layout)


class PackedCoreAttention(MegatronModule):  # type: ignore[misc]  # Megatron-Core is untyped
    """Causal attention over the runs of a packed row (Megatron's ``CoreAttention`` protocol).

    Built by the layer spec with Megatron's core-attention arguments. Context parallelism,
    attention dropout and attention bias are not supported (refused at construction or call).
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str,
                 attention_dropout: float | None = None, softmax_scale: float | None = None, cp_comm_type: str | None = None,
                 pg_collection: Any = None) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError(f"PackedCoreAttention runs without context parallelism, got context_parallel_size={config.context_parallel_size}")
        dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        if dropout:
            raise ValueError(f"PackedCoreAttention has no attention dropout, got {dropout}")
        if attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"PackedCoreAttention is causal, got attn_mask_type={attn_mask_type}")
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None, attn_mask_type: AttnMaskType | None = None,
                attention_bias: Tensor | None = None, packed_seq_params: PackedSeqParams | None = None) -> Tensor:
        """``query`` ``[T, 1, Hq, D]``, ``key``/``value`` ``[T, 1, Hkv, D]`` (this rank's heads) -> ``[T, 1, Hq * D]``."""
        if not isinstance(packed_seq_params, PackedRows) or packed_seq_params.layout is None:
            raise ValueError(f"PackedCoreAttention takes a packed row with PackedRows parameters, got {type(packed_seq_params).__name__}")
        if attention_mask is not None or attention_bias is not None:
            raise ValueError("PackedCoreAttention takes no attention mask or bias: the packed layout says what each token sees")
        rows = packed_seq_params
        q, k, v = (t.squeeze(1).transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # [1, H, T, D]
        out, _ = packed_attention(self, q, k, v, None, scaling=self.softmax_scale, cu_seq_lens_q=rows.cu_seqlens_q,
                                  max_length_q=rows.max_seqlen_q, attention_layout=rows.layout)
        return out[0].flatten(1).unsqueeze(1)  # [T, 1, Hq * D]


def rotary_frequencies(inv_freq: Tensor, position_ids: Tensor, *, interleaved: bool = False) -> Tensor:
    """Per-token rotary angles ``[T, 1, 1, D]`` for positions ``[T]`` (Megatron's ``[s, b, 1, d]``
    layout, both halves repeated as Megatron's non-interleaved RoPE expects)."""
    angles = torch.outer(position_ids.to(inv_freq.dtype), inv_freq)  # [T, D / 2]
    emb = torch.stack((angles, angles), dim=-1).flatten(-2) if interleaved else torch.cat((angles, angles), dim=-1)
    return emb[:, None, None, :]
