"""A lean forward pass for Llama-family causal LMs over a slot-based KV cache.

:class:`LeanDecoder` serves the embedded engine: it runs the decoder stack of a Hugging Face
``*ForCausalLM`` module with the module's own parameters, but without HF's generic machinery
(cache objects, mask factories, per-call output records), which costs HF's CPU decode step about
a third of its time at batch 32. Supported architectures are listed in :data:`ARCHITECTURES` and picked by
``config.model_type``; their numerics follow the HF modules op for op (RMSNorm in fp32, RoPE
from the model's own rotary embedding, so ``rope_scaling`` variants come for free). In fp32 a
row decoded alone reproduces HF's cached decode exactly, and batched rows stay within the noise
of HF's own batched forward.

Weights. Projections read the HF parameters directly, except in bf16 on a CPU with oneDNN: there
each layer's q/k/v (and gate/up) weights are concatenated and pre-packed into oneDNN's blocked
layout, which makes the memory-bound decode matmuls ~35% faster. Those packed copies are
rebuilt from the HF parameters by :meth:`LeanDecoder.load_weights`.

KV cache. :class:`KVCache` holds K and V of every layer, row ``r`` of the batch in slot ``r``.
Rows run at different lengths; row ``r`` owns positions ``[0, lengths[r])``, and attention
masks each row to its own length. Callers keep running rows in slots ``0 .. B-1`` and fill a
freed slot by moving the last row into it (:meth:`KVCache.move_row`). A prompt prefix shared by
several new rows is computed once and copied (:meth:`LeanDecoder.share_prefix`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from agentrl.errors import ModelError, PolicyError

CACHE_CHUNK = 256
"""The KV cache grows its length capacity in multiples of this many positions."""

SLOT_CHUNK = 8
"""The KV cache grows its row capacity in multiples of this many slots."""

PACK_BATCH = 32
"""Batch size oneDNN tunes packed weight layouts for (any batch size runs on them)."""


@dataclass(frozen=True)
class Architecture:
    """What sets one supported decoder family apart from Llama.

    Attributes:
        qk_norm: RMSNorm over each head of q and k before RoPE (Qwen3).
    """

    qk_norm: bool = False


ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(),
    "mistral": Architecture(),
    "qwen2": Architecture(),
    "qwen3": Architecture(qk_norm=True),
}
"""``config.model_type`` -> architecture. Biases and sliding windows are read off the config."""


def architecture_of(model: PreTrainedModel) -> Architecture:
    """The entry of :data:`ARCHITECTURES` for ``model``.

    Raises:
        ModelError: ``config.model_type`` is not supported; the message lists what is.
    """
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"the embedded engine has no lean forward for model_type {model_type!r}; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[model_type]


class KVCache:
    """K and V of every layer, grown on demand in rows (slots) and positions.

    ``data`` has shape ``[layers, 2 (k, v), slots, kv_heads, capacity, head_dim]``; slot ``r``
    holds row ``r``. Growing copies what is stored; :meth:`release` frees it all.
    """

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, *, dtype: torch.dtype, device: torch.device
    ) -> None:
        self._dims = (layers, 2)
        self._head = (kv_heads, head_dim)
        self.data = torch.empty((layers, 2, 0, kv_heads, 0, head_dim), dtype=dtype, device=device)

    @property
    def slots(self) -> int:
        """Rows the cache can hold now."""
        return self.data.shape[2]

    @property
    def capacity(self) -> int:
        """Positions each slot can hold now."""
        return self.data.shape[4]

    def reserve(self, rows: int, length: int) -> None:
        """Make room for ``rows`` slots of ``length`` positions, keeping what is stored."""
        if rows <= self.slots and length <= self.capacity:
            return
        slots = _grown(self.slots, rows, SLOT_CHUNK)
        capacity = _grown(self.capacity, length, CACHE_CHUNK)
        kv_heads, head_dim = self._head
        # zeros, not garbage: masked positions still enter the matmuls (0 * NaN would be NaN)
        grown = self.data.new_zeros((*self._dims, slots, kv_heads, capacity, head_dim))
        grown[:, :, : self.slots, :, : self.capacity] = self.data
        self.data = grown

    def release(self) -> None:
        """Free the storage; the next :meth:`reserve` allocates afresh."""
        if self.data.numel():
            self.data = self.data.new_empty((*self._dims, 0, self._head[0], 0, self._head[1]))

    def copy_prefix(self, src: int, dst: range, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into every slot of ``dst``."""
        if len(dst):
            self.data[:, :, dst.start : dst.stop, :, :length] = self.data[:, :, src : src + 1, :, :length]

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        self.data[:, :, dst, :, :length] = self.data[:, :, src, :, :length]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _grown(size: int, needed: int, chunk: int) -> int:
    """``size`` if it holds ``needed``, else at least 1.5x ``size``, in whole chunks. Geometric, so
    a cache grown step by step allocates at most ~3x its final size in all: CUDA's caching
    allocator keeps each outgrown block, and growing 8 slots at a time to 320 slots allocated ~20x."""
    if needed <= size:
        return size
    return max(_round_up(needed, chunk), _round_up(size * 3 // 2, chunk))


class _Projection:
    """``x @ cat(W_1, ..., W_n).T (+ bias)`` for one or more HF linears sharing an input.

    Returns one output per linear. Plain: one ``F.linear`` per linear on the live HF
    parameters. Packed (bf16 on CPU): one oneDNN matmul on a packed copy of the concatenated
    weights, which :meth:`refresh` rebuilds after the parameters change.
    """

    def __init__(self, linears: Sequence[nn.Linear], *, packed: bool) -> None:
        self._linears = list(linears)
        self._sizes = [lin.out_features for lin in self._linears]
        self._packed = packed
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
        self.refresh()

    def refresh(self) -> None:
        """Re-read the HF parameters (packed mode only; plain mode always reads them live)."""
        if not self._packed:
            return
        weight = torch.cat([lin.weight.detach() for lin in self._linears])
        self._weight = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_BATCH)
        biases = [lin.bias for lin in self._linears]
        self._bias = None if biases[0] is None else torch.cat([b.detach() for b in biases if b is not None])

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self._packed:
            return [F.linear(x, lin.weight, lin.bias) for lin in self._linears]
        flat = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, x.shape[-1]), self._weight, self._bias, "none", [], ""
        )
        return list(flat.view(*x.shape[:-1], -1).split(self._sizes, dim=-1))


@dataclass(frozen=True)
class _Layer:
    """One decoder layer: its norms (live HF parameters) and projections."""

    input_norm: torch.Tensor  # [D]
    qkv: _Projection  # -> q [.., H * hd], k and v [.., KV * hd]
    q_norm: torch.Tensor | None  # [hd], Qwen3 only
    k_norm: torch.Tensor | None  # [hd], Qwen3 only
    o_proj: _Projection
    post_norm: torch.Tensor  # [D]
    gate_up: _Projection  # -> gate, up [.., I]
    down_proj: _Projection
    window: int | None  # sliding-window size, None for full attention

    def projections(self) -> list[_Projection]:
        return [self.qkv, self.o_proj, self.gate_up, self.down_proj]


def packs_weights(dtype: torch.dtype, device: torch.device) -> bool:
    """Whether projections use oneDNN-packed weights: bf16 on a CPU whose oneDNN supports it."""
    return (
        device.type == "cpu"
        and dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class LeanDecoder:
    """Prefill and decode steps of a supported HF causal LM over a :class:`KVCache`.

    Not thread-safe: one thread drives it. Call it under ``torch.inference_mode()``.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        """
        Raises:
            ModelError: ``config.model_type`` is not in :data:`ARCHITECTURES`.
        """
        self.architecture = architecture_of(model)
        config = model.config
        self.model = model
        self.num_heads: int = config.num_attention_heads
        self.num_kv_heads: int = config.num_key_value_heads
        self.head_dim: int = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps: float = config.rms_norm_eps
        self.max_positions: int = config.max_position_embeddings
        self.vocab_size: int = config.vocab_size
        backbone = model.model
        self._embed: torch.Tensor = backbone.embed_tokens.weight
        self._final_norm: torch.Tensor = backbone.norm.weight
        self._rotary: nn.Module = backbone.rotary_emb
        self.packed = packs_weights(self.dtype, self.device)
        with torch.no_grad():
            self._lm_head = _Projection([model.lm_head], packed=self.packed)
            windows = _layer_windows(config)
            self._layers = [self._bind_layer(layer, w) for layer, w in zip(backbone.layers, windows)]

    @property
    def dtype(self) -> torch.dtype:
        return self._embed.dtype

    @property
    def device(self) -> torch.device:
        return self._embed.device

    def new_cache(self) -> KVCache:
        """An empty cache in the model's dtype and on its device."""
        return KVCache(
            len(self._layers), self.num_kv_heads, self.head_dim, dtype=self.dtype, device=self.device
        )

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy tensors into the HF parameters of the same names; returns how many.

        Accepts every key of the HF ``state_dict`` (tied names such as ``lm_head.weight``
        included). Call it between steps: a step running meanwhile would see a mix.

        Raises:
            PolicyError: a name is unknown or a shape differs; the tensors before it are loaded.
        """
        targets = self.model.state_dict(keep_vars=True)
        count = 0
        try:
            with torch.no_grad():
                for name, tensor in named_tensors:
                    _check_target(name, targets.get(name), tensor, next(iter(targets)))
                    targets[name].copy_(tensor)
                    count += 1
        finally:
            if count and self.packed:
                with torch.no_grad():
                    for projection in self._projections():
                        projection.refresh()
        return count

    def prefill(
        self, cache: KVCache, input_ids: torch.Tensor, lengths: torch.Tensor, first_slot: int,
        start: int = 0,
    ) -> torch.Tensor:
        """Run right-padded prompts, store their K/V in consecutive slots, return last logits.

        Args:
            cache: receives K/V of positions ``[start, start + T)`` in slots
                ``first_slot .. first_slot+N-1`` (pad positions too; they are masked and
                overwritten later), and must already hold positions ``[0, start)`` of those slots
                (see :meth:`share_prefix`).
            input_ids: ``[N, T]`` token ids following position ``start``, each row right-padded
                past its length.
            lengths: ``[N]`` real length of each row (not counting ``start``).
            first_slot: slot of the first row.
            start: position of the first token.

        Returns:
            ``[N, vocab]`` fp32 logits at each row's last real position.
        """
        x = self._extend(cache, input_ids, first_slot, start)
        last = x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        return self._logits(last)

    def share_prefix(self, cache: KVCache, prefix: torch.Tensor, slots: range) -> None:
        """Fill positions ``[0, P)`` of every slot in ``slots`` with the K/V of ``prefix``
        (``[P]`` token ids), computing them once: follow with ``prefill(..., start=P)``."""
        self._extend(cache, prefix[None], slots.start, 0)
        cache.copy_prefix(slots.start, slots[1:], prefix.shape[0])

    def _extend(
        self, cache: KVCache, input_ids: torch.Tensor, first_slot: int, start: int
    ) -> torch.Tensor:
        """The decoder stack over ``[N, T]`` tokens at positions ``start ..``, attending to
        the cached positions before them; stores their K/V. Returns hidden states ``[N, T, D]``."""
        n, t = input_ids.shape
        positions = torch.arange(start, start + t, device=input_ids.device).expand(n, t)
        x = F.embedding(input_ids, self._embed)
        rope = self._rope(x, positions)
        slots = slice(first_slot, first_slot + n)
        end = start + t
        for i, layer in enumerate(self._layers):
            q, k, v = self._project_qkv(layer, x, rope)  # [N, T, heads, hd]
            cache.data[i, 0, slots, :, start:end] = k.transpose(1, 2)
            cache.data[i, 1, slots, :, start:end] = v.transpose(1, 2)
            if start:
                k, v = (cache.data[i, j, slots, :, :end].transpose(1, 2) for j in (0, 1))
            attn = _causal_attention(q, k, v, layer.window)
            x = self._finish_layer(layer, x, attn.reshape(n, t, -1))
        return x

    def decode(self, cache: KVCache, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token for each of rows ``0 .. B-1``; returns their ``[B, vocab]`` fp32 logits.

        Args:
            cache: holds positions ``[0, positions[r])`` of row ``r``; this step writes
                ``positions[r]``. Its capacity must exceed ``positions.max()``.
            tokens: ``[B]`` token id fed to each row.
            positions: ``[B]`` position of that token (the row's current length).
        """
        b = tokens.shape[0]
        length = int(positions.max()) + 1
        x = F.embedding(tokens, self._embed)[:, None]  # [B, 1, D]
        rope = self._rope(x, positions[:, None])
        masks = _decode_masks(positions, length, {layer.window for layer in self._layers}, x.dtype)
        rows = torch.arange(b, device=tokens.device)
        for i, layer in enumerate(self._layers):
            q, k, v = self._project_qkv(layer, x, rope)  # [B, 1, heads, hd]
            keys, values = cache.data[i, 0], cache.data[i, 1]  # [slots, KV, capacity, hd]
            keys[rows, :, positions] = k[:, 0]
            values[rows, :, positions] = v[:, 0]
            attn = _cached_attention(q[:, 0], keys[:b, :, :length], values[:b, :, :length],
                                     masks[layer.window])
            x = self._finish_layer(layer, x, attn[:, None])
        return self._logits(x[:, 0])

    def _bind_layer(self, layer: Any, window: int | None) -> _Layer:  # an HF decoder layer
        attn, mlp = layer.self_attn, layer.mlp
        qk_norm = self.architecture.qk_norm
        return _Layer(
            input_norm=layer.input_layernorm.weight,
            qkv=_Projection([attn.q_proj, attn.k_proj, attn.v_proj], packed=self.packed),
            q_norm=attn.q_norm.weight if qk_norm else None,
            k_norm=attn.k_norm.weight if qk_norm else None,
            o_proj=_Projection([attn.o_proj], packed=self.packed),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=_Projection([mlp.gate_proj, mlp.up_proj], packed=self.packed),
            down_proj=_Projection([mlp.down_proj], packed=self.packed),
            window=window,
        )

    def _projections(self) -> list[_Projection]:
        return [self._lm_head, *(p for layer in self._layers for p in layer.projections())]

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and sign-folded ``sin`` of shape ``[N, T, 1, hd]`` (see :func:`_apply_rope`)."""
        cos, sin = self._rotary(x, positions)
        half = self.head_dim // 2
        signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos[:, :, None], signed_sin[:, :, None]

    def _project_qkv(
        self, layer: _Layer, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``[N, T, H, hd]``, k and v ``[N, T, KV, hd]``, with norms and RoPE applied."""
        h = F.rms_norm(x, x.shape[-1:], layer.input_norm, self.eps)
        q, k, v = (t.view(*x.shape[:2], -1, self.head_dim) for t in layer.qkv(h))
        if layer.q_norm is not None:
            q = F.rms_norm(q, (self.head_dim,), layer.q_norm, self.eps)
            k = F.rms_norm(k, (self.head_dim,), layer.k_norm, self.eps)
        return _apply_rope(q, *rope), _apply_rope(k, *rope), v

    def _finish_layer(self, layer: _Layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, MLP, residual."""
        (o,) = layer.o_proj(attn)
        x = x + o
        h = F.rms_norm(x, x.shape[-1:], layer.post_norm, self.eps)
        gate, up = layer.gate_up(h)
        (down,) = layer.down_proj(F.silu(gate).mul_(up))
        return x.add_(down)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.rms_norm(hidden, hidden.shape[-1:], self._final_norm, self.eps)
        (logits,) = self._lm_head(hidden)
        return logits.float()


def _check_target(name: str, target: torch.Tensor | None, tensor: torch.Tensor, example: str) -> None:
    if target is None:
        raise PolicyError(
            f"update_weights: unknown parameter {name!r}; expected a Hugging Face name such as "
            f"{example!r}"
        )
    if target.shape != tensor.shape:
        raise PolicyError(
            f"update_weights: {name} has shape {tuple(target.shape)}, got {tuple(tensor.shape)}"
        )


def _layer_windows(config: object) -> list[int | None]:
    """Sliding-window size of each layer (``None``: full attention), as HF's modules read it."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    num_layers: int = config.num_hidden_layers  # type: ignore[attr-defined]
    if layer_types is None:  # Mistral: one window for every layer
        return [window] * num_layers
    return [window if kind == "sliding_attention" else None for kind in layer_types]


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """HF's ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) * sin`` computed as
    ``roll(x, hd/2) * signed_sin`` (``signed_sin`` = sin with its first half negated): the same
    products and sums, in fewer ops."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Causal (optionally sliding-window) attention of ``T`` queries that follow ``S - T``
    earlier keys: q ``[N, T, H, hd]``, k and v ``[N, S, KV, hd]``; output ``[N, T, H, hd]``."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    t, s = q.shape[2], k.shape[2]
    if s == t and (window is None or t <= window):
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        query_pos = torch.arange(s - t, s, device=q.device)[:, None]
        offset = query_pos - torch.arange(s, device=q.device)[None, :]  # query minus key position
        mask = (offset >= 0) & (offset < (window or s))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


def _decode_masks(
    positions: torch.Tensor, length: int, windows: set[int | None], dtype: torch.dtype
) -> dict[int | None, torch.Tensor]:
    """Additive masks ``[B, 1, 1, length]`` per window size: 0 where row ``r`` may attend."""
    keys = torch.arange(length, device=positions.device)[None, :]
    causal = keys <= positions[:, None]
    masks = {}
    for window in windows:
        allowed = causal if window is None else causal & (keys > positions[:, None] - window)
        additive = torch.zeros(allowed.shape, dtype=dtype, device=positions.device)
        masks[window] = additive.masked_fill_(~allowed, float("-inf"))[:, None, None, :]
    return masks


def _cached_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """One query per row against its cached keys: ``q [B, H, hd]``, ``keys``/``values``
    ``[B, KV, L, hd]``, ``mask [B, 1, 1, L]``; returns ``[B, H * hd]``."""
    out = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=mask, enable_gqa=True)
    return out.reshape(q.shape[0], -1)
