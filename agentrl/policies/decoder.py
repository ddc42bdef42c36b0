"""A lean forward pass for Llama-family causal LMs over a slot-based KV cache.

:class:`LeanDecoder` serves the embedded engine: it runs the decoder stack of a Hugging Face
``*ForCausalLM`` module with the module's own parameters, but without HF's generic machinery
(cache objects, mask factories, per-call output records), which dominates the cost of a decode
step on a CPU. Supported architectures are listed in :data:`ARCHITECTURES` and picked by
``config.model_type``; their numerics follow the HF modules op for op (RMSNorm in fp32, RoPE
from the model's own rotary embedding, so ``rope_scaling`` variants come for free), and the
logits match HF's forward within 1e-4 in fp32.

Weights. :func:`LeanDecoder.__init__` lays the q/k/v projections (and gate/up) of each layer out in
one buffer and points the HF module's parameters at their rows of it, so one matmul serves the
three projections while the HF module, ``state_dict()`` and in-place weight updates keep working
on the same memory. Laying out is idempotent: a second decoder on the same module reuses it.

KV cache. :class:`KVCache` holds K and V of every layer, row ``r`` of the batch in slot ``r``.
Rows run at different lengths; row ``r`` owns positions ``[0, lengths[r])``, and attention
masks each row to its own length. Callers keep running rows in slots ``0 .. B-1`` and fill a
freed slot by moving the last row into it (:meth:`KVCache.move_row`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from agentrl.errors import ModelError, PolicyError

CACHE_CHUNK = 256
"""The KV cache grows its length capacity in multiples of this many positions."""

SLOT_CHUNK = 8
"""The KV cache grows its row capacity in multiples of this many slots."""


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
        slots = max(self.slots, _round_up(rows, SLOT_CHUNK))
        capacity = max(self.capacity, _round_up(length, CACHE_CHUNK))
        kv_heads, head_dim = self._head
        # zeros, not garbage: masked positions still enter the matmuls (0 * NaN would be NaN)
        grown = self.data.new_zeros((*self._dims, slots, kv_heads, capacity, head_dim))
        grown[:, :, : self.slots, :, : self.capacity] = self.data
        self.data = grown

    def release(self) -> None:
        """Free the storage; the next :meth:`reserve` allocates afresh."""
        if self.data.numel():
            self.data = self.data.new_empty((*self._dims, 0, self._head[0], 0, self._head[1]))

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``src`` into slot ``dst``."""
        self.data[:, :, dst, :, :length] = self.data[:, :, src, :, :length]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class _Layer:
    """The tensors of one decoder layer, shared with the HF module (views, not copies)."""

    input_norm: torch.Tensor  # [D]
    qkv_weight: torch.Tensor  # [(H + 2 KV) * hd, D]
    qkv_bias: torch.Tensor | None  # [(H + 2 KV) * hd]
    q_norm: torch.Tensor | None  # [hd], Qwen3 only
    k_norm: torch.Tensor | None  # [hd], Qwen3 only
    o_weight: torch.Tensor  # [D, H * hd]
    o_bias: torch.Tensor | None
    post_norm: torch.Tensor  # [D]
    gate_up_weight: torch.Tensor  # [2 I, D]
    gate_up_bias: torch.Tensor | None  # [2 I]
    down_weight: torch.Tensor  # [D, I]
    down_bias: torch.Tensor | None
    window: int | None  # sliding-window size, None for full attention


class LeanDecoder:
    """Prefill and decode steps of a supported HF causal LM over a :class:`KVCache`.

    Not thread-safe: one thread drives it. Call it under ``torch.inference_mode()``.
    """

    def __init__(self, model: PreTrainedModel) -> None:
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
        self._lm_head: torch.Tensor = model.lm_head.weight
        self._rotary: nn.Module = backbone.rotary_emb
        windows = _layer_windows(config)
        with torch.no_grad():
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
        """Copy tensors into the parameters of the same HF names, in place; returns the count.

        Accepts every key of the HF ``state_dict`` (tied names such as ``lm_head.weight``
        included). Call it between steps: a step running meanwhile would see a mix.

        Raises:
            PolicyError: a name is unknown or a shape differs; tensors before it are loaded.
        """
        targets = self.model.state_dict(keep_vars=True)
        count = 0
        with torch.no_grad():
            for name, tensor in named_tensors:
                target = targets.get(name)
                if target is None:
                    raise PolicyError(
                        f"update_weights: unknown parameter {name!r}; expected a Hugging Face "
                        f"name such as {next(iter(targets))!r}"
                    )
                if target.shape != tensor.shape:
                    raise PolicyError(
                        f"update_weights: {name} has shape {tuple(target.shape)}, "
                        f"got {tuple(tensor.shape)}"
                    )
                target.copy_(tensor)
                count += 1
        return count

    def prefill(
        self, cache: KVCache, input_ids: torch.Tensor, lengths: torch.Tensor, first_slot: int
    ) -> torch.Tensor:
        """Run right-padded prompts, store their K/V in consecutive slots, return last logits.

        Args:
            cache: receives K/V of positions ``[0, T)`` in slots ``first_slot .. first_slot+N-1``
                (pad positions too; they are masked and overwritten later). Must hold ``T``.
            input_ids: ``[N, T]`` token ids, each row right-padded past its length.
            lengths: ``[N]`` real length of each row, on the model's device.
            first_slot: slot of the first row.

        Returns:
            ``[N, vocab]`` fp32 logits at each row's last real position.
        """
        n, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).expand(n, t)
        x = F.embedding(input_ids, self._embed)
        rope = self._rope(x, positions)
        slots = slice(first_slot, first_slot + n)
        for i, layer in enumerate(self._layers):
            q, k, v = self._project_qkv(layer, x, rope)  # [N, T, heads, hd]
            cache.data[i, 0, slots, :, :t] = k.transpose(1, 2)
            cache.data[i, 1, slots, :, :t] = v.transpose(1, 2)
            attn = _causal_attention(q, k, v, layer.window)
            x = self._finish_layer(layer, x, attn.reshape(n, t, -1))
        last = x[torch.arange(n, device=x.device), lengths - 1]
        return self._logits(last)

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

    def _bind_layer(self, layer: nn.Module, window: int | None) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        qkv_weight, qkv_bias = _fuse_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        gate_up_weight, gate_up_bias = _fuse_linears([mlp.gate_proj, mlp.up_proj])
        qk_norm = self.architecture.qk_norm
        return _Layer(
            input_norm=layer.input_layernorm.weight,
            qkv_weight=qkv_weight,
            qkv_bias=qkv_bias,
            q_norm=attn.q_norm.weight if qk_norm else None,
            k_norm=attn.k_norm.weight if qk_norm else None,
            o_weight=attn.o_proj.weight,
            o_bias=attn.o_proj.bias,
            post_norm=layer.post_attention_layernorm.weight,
            gate_up_weight=gate_up_weight,
            gate_up_bias=gate_up_bias,
            down_weight=mlp.down_proj.weight,
            down_bias=mlp.down_proj.bias,
            window=window,
        )

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
        qkv = F.linear(h, layer.qkv_weight, layer.qkv_bias)
        qkv = qkv.view(*x.shape[:2], self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        heads = self.num_heads + self.num_kv_heads
        if layer.q_norm is None:
            qk = _apply_rope(qkv[:, :, :heads], *rope)
        else:
            q = F.rms_norm(qkv[:, :, : self.num_heads], (self.head_dim,), layer.q_norm, self.eps)
            k = F.rms_norm(qkv[:, :, self.num_heads : heads], (self.head_dim,), layer.k_norm, self.eps)
            qk = _apply_rope(torch.cat((q, k), dim=2), *rope)
        return qk[:, :, : self.num_heads], qk[:, :, self.num_heads :], qkv[:, :, heads:]

    def _finish_layer(self, layer: _Layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, MLP, residual."""
        x = x + F.linear(attn, layer.o_weight, layer.o_bias)
        h = F.rms_norm(x, x.shape[-1:], layer.post_norm, self.eps)
        gate, up = F.linear(h, layer.gate_up_weight, layer.gate_up_bias).chunk(2, dim=-1)
        return x + F.linear(F.silu(gate) * up, layer.down_weight, layer.down_bias)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.rms_norm(hidden, hidden.shape[-1:], self._final_norm, self.eps)
        return F.linear(hidden, self._lm_head).float()


def _layer_windows(config: object) -> list[int | None]:
    """Sliding-window size of each layer (``None``: full attention), as HF's modules read it."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    num_layers: int = config.num_hidden_layers  # type: ignore[attr-defined]
    if layer_types is None:  # Mistral: one window for every layer
        return [window] * num_layers
    return [window if kind == "sliding_attention" else None for kind in layer_types]


def _fuse_linears(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) buffer for ``linears``; their parameters become views of it."""
    weight = _fuse([lin.weight for lin in linears])
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return weight, None
    if any(b is None for b in biases):
        raise ModelError("cannot fuse projections of which only some have a bias")
    return weight, _fuse(biases)  # type: ignore[arg-type]


def _fuse(params: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``params`` along dim 0 into one buffer and re-point them at its slices.

    If they already lie back to back in one storage (a previous call did this), the buffer is
    a view spanning them and nothing moves.
    """
    first = params[0]
    rows = sum(p.shape[0] for p in params)
    shape = (rows, *first.shape[1:])
    if _back_to_back(params):
        return first.detach().as_strided(shape, first.detach().contiguous().stride())
    fused = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        p.data = fused[start : start + p.shape[0]]  # the module keeps its Parameter object
        start += p.shape[0]
    return fused


def _back_to_back(tensors: list[torch.Tensor]) -> bool:
    """Whether ``tensors`` are contiguous and follow each other in one storage."""
    storage = tensors[0].untyped_storage().data_ptr()
    offset = tensors[0].storage_offset()
    for t in tensors:
        if not t.is_contiguous() or t.untyped_storage().data_ptr() != storage:
            return False
        if t.storage_offset() != offset:
            return False
        offset += t.numel()
    return True


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """HF's ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) * sin`` computed as
    ``roll(x, hd/2) * signed_sin`` (``signed_sin`` = sin with its first half negated): the same
    products and sums, in fewer ops."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def _causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Causal (optionally sliding-window) self-attention; inputs ``[N, T, heads, hd]``,
    output ``[N, T, H, hd]``."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    t = q.shape[2]
    if window is None or t <= window:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        idx = torch.arange(t, device=q.device)
        offset = idx[:, None] - idx[None, :]  # query minus key position
        mask = (offset >= 0) & (offset < window)
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
