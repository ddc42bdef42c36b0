"""Hugging Face <-> Megatron-Core parameter tables for the Llama, Qwen2 and Qwen3 dense families.

Pure tensor code (no process groups): which Hugging Face tensors make each Megatron parameter
(:data:`LAYER_RULES`, :data:`MODEL_RULES`), how they are fused (:func:`to_megatron`) and split
back (:func:`to_hf`), and which dimension tensor parallelism shards (:func:`tp_shard`). The three
families name their weights alike; a rule whose Megatron parameter a model lacks (``q_layernorm``
without Qwen3's q/k norms, biases without Qwen2's) is simply never used.

Megatron layouts (``G`` key/value groups, ``Hq`` query heads, ``D`` head dim, ``F`` FFN width,
``tp`` tensor-parallel ranks). A "full" tensor is the concatenation of the ``tp`` shards along
the sharded dimension, so it depends on ``tp`` where the fusion does:

* ``linear_qkv``: ``[G * (Hq/G + 2) * D, H]``, per group its queries, then its key, then its value
  (tensor parallelism splits whole groups, so the layout is the same for every ``tp``);
* ``linear_fc1``: ``[2F, H]``, per tensor-parallel shard its slice of ``gate_proj`` then its
  slice of ``up_proj``;
* vocabulary rows (embedding, output layer) padded with zero rows to the padded vocabulary,
  dropped again on export.

``mbridge`` 0.15.1 was checked for this and does not fit: its model provider always asks for
the Transformer Engine layer spec (``LLMBridge._get_transformer_layer_spec`` passes
``use_transformer_engine=True``), and its name tables know only Transformer Engine's fused
layer-norm names (``linear_qkv.layer_norm_weight``), so the local spec's ``input_layernorm``
raises ``NotImplementedError`` in ``_weight_name_mapping_attention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import PretrainedConfig

Fusion = Literal["copy", "qkv", "gate_up"]
LAYER = "model.layers.{layer}."


@dataclass(frozen=True)
class Rule:
    """How one Megatron parameter is made of Hugging Face tensors.

    Attributes:
        megatron: the parameter's name, after ``decoder.layers.<i>.`` for a layer parameter.
        hf: the Hugging Face names in fusion order (``{layer}`` is the global layer index).
        fusion: ``copy`` (one tensor), ``qkv`` or ``gate_up`` (see the module docstring).
        tp_dim: the dimension tensor parallelism shards, ``None`` where each rank holds it all.
        vocab: the rows are the vocabulary (padded in Megatron).
    """

    megatron: str
    hf: tuple[str, ...]
    fusion: Fusion = "copy"
    tp_dim: int | None = None
    vocab: bool = False


def _qkv(kind: str) -> tuple[str, ...]:
    return tuple(f"{LAYER}self_attn.{p}_proj.{kind}" for p in "qkv")


LAYER_RULES: tuple[Rule, ...] = (
    Rule("input_layernorm.weight", (f"{LAYER}input_layernorm.weight",)),
    Rule("self_attention.linear_qkv.weight", _qkv("weight"), "qkv", 0),
    Rule("self_attention.linear_qkv.bias", _qkv("bias"), "qkv", 0),
    Rule("self_attention.q_layernorm.weight", (f"{LAYER}self_attn.q_norm.weight",)),
    Rule("self_attention.k_layernorm.weight", (f"{LAYER}self_attn.k_norm.weight",)),
    Rule("self_attention.linear_proj.weight", (f"{LAYER}self_attn.o_proj.weight",), tp_dim=1),
    Rule("pre_mlp_layernorm.weight", (f"{LAYER}post_attention_layernorm.weight",)),
    Rule("mlp.linear_fc1.weight", (f"{LAYER}mlp.gate_proj.weight", f"{LAYER}mlp.up_proj.weight"), "gate_up", 0),
    Rule("mlp.linear_fc2.weight", (f"{LAYER}mlp.down_proj.weight",), tp_dim=1),
)
EMBEDDING = Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), tp_dim=0, vocab=True)
OUTPUT = Rule("output_layer.weight", ("lm_head.weight",), tp_dim=0, vocab=True)
TIED_OUTPUT = Rule("output_layer.weight", ("model.embed_tokens.weight",), tp_dim=0, vocab=True)
"""With tied embeddings the last pipeline stage holds a copy of the embedding as its output
layer (loaded from the embedding, never exported: the embedding is)."""
MODEL_RULES: tuple[Rule, ...] = (EMBEDDING, Rule("decoder.final_layernorm.weight", ("model.norm.weight",)), OUTPUT)


@dataclass(frozen=True)
class Geometry:
    """The shapes the fusions need.

    Attributes:
        heads, groups, head_dim: query heads, key/value groups, channels per head.
        vocab, padded_vocab: the model's vocabulary and Megatron's padded one.
        tp: tensor-parallel ranks.
    """

    heads: int
    groups: int
    head_dim: int
    vocab: int
    padded_vocab: int
    tp: int

    @classmethod
    def of(cls, hf: PretrainedConfig, *, padded_vocab: int, tp: int) -> Geometry:
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        return cls(hf.num_attention_heads, hf.num_key_value_heads, int(head_dim), hf.vocab_size, padded_vocab, tp)


def to_megatron(rule: Rule, tensors: list[Tensor], geo: Geometry) -> Tensor:
    """The full Megatron tensor (all ``tp`` shards concatenated) of ``rule`` from its HF tensors."""
    if len(tensors) != len(rule.hf):
        raise ValueError(f"{rule.megatron} is made of {len(rule.hf)} tensors, got {len(tensors)}")
    if rule.fusion == "qkv":
        q, k, v = (t.reshape(geo.groups, -1, *t.shape[1:]) for t in tensors)  # [G, n * D, ...]
        return torch.cat((q, k, v), dim=1).reshape(-1, *tensors[0].shape[1:])
    if rule.fusion == "gate_up":
        gate, up = (t.chunk(geo.tp, dim=0) for t in tensors)
        return torch.cat([torch.cat(pair, dim=0) for pair in zip(gate, up)], dim=0)
    (tensor,) = tensors
    if rule.vocab:
        if tensor.shape[0] != geo.vocab:
            raise ValueError(f"{rule.hf[0]} has {tensor.shape[0]} rows, the config's vocabulary {geo.vocab}")
        return torch.cat((tensor, tensor.new_zeros(geo.padded_vocab - geo.vocab, *tensor.shape[1:])))
    return tensor


def to_hf(rule: Rule, full: Tensor, geo: Geometry) -> list[Tensor]:
    """The HF tensors of ``rule`` (in ``rule.hf`` order) from its full Megatron tensor."""
    if rule.fusion == "qkv":
        per_group = geo.heads // geo.groups * geo.head_dim
        grouped = full.reshape(geo.groups, per_group + 2 * geo.head_dim, *full.shape[1:])
        q, k, v = grouped.split([per_group, geo.head_dim, geo.head_dim], dim=1)
        return [t.reshape(-1, *full.shape[1:]) for t in (q, k, v)]
    if rule.fusion == "gate_up":
        halves = [shard.chunk(2, dim=0) for shard in full.chunk(geo.tp, dim=0)]
        return [torch.cat([h[0] for h in halves]), torch.cat([h[1] for h in halves])]
    return [full[: geo.vocab] if rule.vocab else full]


def tp_shard(full: Tensor, rule: Rule, rank: int, tp: int) -> Tensor:
    """Tensor-parallel rank ``rank``'s shard of a full Megatron tensor."""
    return full if rule.tp_dim is None else full.chunk(tp, dim=rule.tp_dim)[rank]


def hf_names(rule: Rule, layer: int | None) -> list[str]:
    """``rule.hf`` with the global layer index filled in."""
    return [name.format(layer=layer) for name in rule.hf]


LAYER_RULE = {rule.megatron: rule for rule in LAYER_RULES}
MODEL_RULE = {rule.megatron: rule for rule in MODEL_RULES}


def rule_for(name: str, *, tied: bool) -> Rule:
    """The rule of a Megatron parameter name relative to ``decoder.layers.<i>.`` for layer
    parameters, else the full name.

    Raises:
        KeyError: no rule converts that parameter.
    """
    if tied and name == OUTPUT.megatron:
        return TIED_OUTPUT
    rule = LAYER_RULE.get(name) or MODEL_RULE.get(name)
    if rule is None:
        raise KeyError(f"no Hugging Face conversion rule for Megatron parameter {name!r}")
    return rule
