"""A Megatron-Core ``GPTModel`` built from a Hugging Face config (Llama, Qwen2 and Qwen3 dense).

The three families share one architecture (RMSNorm, rotary embeddings, grouped-query attention,
SwiGLU); :data:`FAMILIES` holds what differs, keyed by ``config.model_type``. Settings the
backend cannot reproduce exactly (biases on every projection, sliding windows, other rope
scalings) are refused with a :class:`~agentrl.errors.ModelError` naming the field.

The layer spec is Megatron's local (no Transformer Engine) spec with two substitutions:
:class:`~agentrl.trainers.megatron.attention.PackedCoreAttention` as the core attention (packed
rows) and :class:`RMSNorm` as every norm (PyTorch's RMSNorm, which unlike Megatron's
``WrappedTorchNorm`` supports sequence parallelism). Megatron initialises the weights randomly
before they are loaded (:mod:`agentrl.trainers.megatron.weights`): only its initialisation tags
tensor-parallel weights (``tensor_model_parallel``), without which gradient norms count each
shard once instead of once per rank; the draw uses a forked RNG, so the process's stays as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PretrainedConfig

from agentrl.errors import ConfigError, ModelError
from agentrl.trainers.megatron.attention import PackedCoreAttention
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.mcore import (
    GPTModel,
    IdentityOp,
    ModuleSpec,
    TransformerBlockSubmodules,
    TransformerConfig,
    get_gpt_layer_local_spec,
    get_num_layers_to_build,
    parallel_state,
)


@dataclass(frozen=True)
class Family:
    """What one ``model_type`` adds to the shared architecture.

    Attributes:
        qkv_bias: the query/key/value projections have biases (and the output projection not).
        qk_norm: per-head RMSNorm of queries and keys before the rotary embedding.
    """

    qkv_bias: bool
    qk_norm: bool


FAMILIES: dict[str, Family] = {
    "llama": Family(qkv_bias=False, qk_norm=False),
    "qwen2": Family(qkv_bias=True, qk_norm=False),
    "qwen3": Family(qkv_bias=False, qk_norm=True),
}
REQUIRED: tuple[tuple[str, object], ...] = (
    ("hidden_act", "silu"),
    ("attention_bias", False),  # Llama/Qwen3: a bias on every projection, o_proj's included
    ("mlp_bias", False),
    ("use_sliding_window", False),
)
"""Fields whose other values this backend does not reproduce, with the value it needs (a field
a family lacks counts as that value)."""
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
"""The only ``llama3`` rope scaling Megatron-Core's ``RotaryEmbedding`` implements (its defaults)."""


def family(hf: PretrainedConfig) -> Family:
    """The family of ``hf``, after checking every field this backend depends on.

    Raises:
        ModelError: an unsupported ``model_type``, field value or rope scaling.
    """
    found = FAMILIES.get(hf.model_type)
    if found is None:
        raise ModelError(f"the Megatron backend converts model_type {', '.join(FAMILIES)}; this model is {hf.model_type!r}")
    for name, expected in REQUIRED:
        value = getattr(hf, name, expected)
        if value != expected:
            raise ModelError(f"{hf.model_type} with {name}={value!r} is not supported by the Megatron backend (it needs {expected!r})")
    _rope(hf)
    return found


def _rope(hf: PretrainedConfig) -> tuple[float, float | None]:
    """``(theta, llama3 scaling factor or None)`` from ``hf.rope_parameters``."""
    params: dict[str, Any] = dict(getattr(hf, "rope_parameters", None) or {})
    kind = params.get("rope_type", "default")
    if "rope_theta" not in params or kind not in ("default", "llama3"):
        raise ModelError(f"{hf.model_type}: rope_parameters {params} are not supported (rope_type default or llama3 with rope_theta)")
    if kind == "default":
        return float(params["rope_theta"]), None
    mismatched = {k: params.get(k) for k, v in LLAMA3_ROPE.items() if params.get(k) != v}
    if mismatched:
        raise ModelError(f"{hf.model_type}: llama3 rope scaling with {mismatched} is not supported (Megatron-Core implements {LLAMA3_ROPE})")
    return float(params["rope_theta"]), float(params["factor"])


def head_dim(hf: PretrainedConfig) -> int:
    """Channels per attention head."""
    return int(getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)


def padded_vocab_size(vocab_size: int, parallel: MegatronConfig) -> int:
    """The vocabulary rounded up to a multiple of ``make_vocab_size_divisible_by * TP``."""
    multiple = parallel.make_vocab_size_divisible_by * parallel.tensor_model_parallel_size
    return math.ceil(vocab_size / multiple) * multiple


def check_divisible(hf: PretrainedConfig, parallel: MegatronConfig) -> None:
    """Raise :class:`ConfigError` unless the parallel sizes divide the model's heads and layers."""
    tp, pp = parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size
    for count, what in ((hf.num_attention_heads, "attention heads"), (hf.num_key_value_heads, "key/value heads")):
        if count % tp:
            raise ConfigError(f"--tensor-model-parallel-size {tp} does not divide the model's {count} {what}")
    if hf.num_hidden_layers % pp:
        raise ConfigError(f"--pipeline-model-parallel-size {pp} does not divide the model's {hf.num_hidden_layers} layers")


def transformer_config(hf: PretrainedConfig, parallel: MegatronConfig, *, bf16: bool, cpu: bool) -> TransformerConfig:
    """Megatron's ``TransformerConfig`` of ``hf``: dropout off; of Megatron's fusions only the
    SwiGLU one (``torch.compile``-fused), on GPUs only: the rest need Transformer Engine or Apex.

    ``calculate_per_token_loss`` is on so that neither Megatron's schedule nor its DDP rescales
    losses or gradients: agentrl's loss weights already normalise over the whole optimizer step.
    """
    fam = family(hf)
    check_divisible(hf, parallel)
    dtype = torch.bfloat16 if bf16 else torch.float32
    return TransformerConfig(
        num_layers=hf.num_hidden_layers, hidden_size=hf.hidden_size, ffn_hidden_size=hf.intermediate_size,
        num_attention_heads=hf.num_attention_heads, num_query_groups=hf.num_key_value_heads, kv_channels=head_dim(hf),
        normalization="RMSNorm", layernorm_epsilon=hf.rms_norm_eps, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=fam.qkv_bias, qk_layernorm=fam.qk_norm,
        hidden_dropout=0.0, attention_dropout=0.0, bias_activation_fusion=not cpu, masked_softmax_fusion=False,
        bias_dropout_fusion=False, apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=bf16, use_cpu_initialization=cpu,
        tensor_model_parallel_size=parallel.tensor_model_parallel_size, pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size, sequence_parallel=parallel.sequence_parallel,
        variable_seq_lengths=True, moe_token_dispatcher_type="alltoall",  # Megatron refuses variable lengths with its default (allgather), MoE or not
        calculate_per_token_loss=True, recompute_granularity=parallel.recompute_granularity,
        recompute_method=parallel.recompute_method, recompute_num_layers=parallel.recompute_num_layers,
    )


class RMSNorm(torch.nn.RMSNorm):
    """PyTorch's RMSNorm built with Megatron's norm arguments. Under sequence parallelism its
    weight is marked ``sequence_parallel`` so that Megatron sums its gradient over the
    tensor-parallel ranks (each saw a slice of the tokens)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5) -> None:
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        super().__init__(hidden_size, eps=eps, device=device, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel  # type: ignore[attr-defined]  # Megatron reads this attribute


class FusedRMSNorm(RMSNorm):
    """:class:`RMSNorm` computed by a fused kernel ``(x, weight, eps) -> y`` (liger-kernel's)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, *,
                 kernel: Callable[[Tensor, Tensor, float], Tensor]) -> None:
        super().__init__(config, hidden_size, eps)
        self.kernel, self.kernel_eps = kernel, eps

    def forward(self, x: Tensor) -> Tensor:
        return self.kernel(x, self.weight, self.kernel_eps)


def layer_spec(config: TransformerConfig, norm_kernel: Callable[[Tensor, Tensor, float], Tensor] | None = None) -> TransformerBlockSubmodules:
    """The decoder block of this pipeline stage: the local layer spec with packed core attention
    and :class:`RMSNorm` everywhere (computed by ``norm_kernel`` where given)."""
    norm = RMSNorm if norm_kernel is None else ModuleSpec(module=FusedRMSNorm, params={"kernel": norm_kernel})
    spec = get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization="RMSNorm")
    layer, attention = spec.submodules, spec.submodules.self_attention.submodules
    layer.input_layernorm = layer.pre_mlp_layernorm = norm
    attention.core_attention = PackedCoreAttention
    attention.q_layernorm = attention.k_layernorm = norm if config.qk_layernorm else IdentityOp
    return TransformerBlockSubmodules(layer_specs=[spec] * get_num_layers_to_build(config), layer_norm=norm)


def build_model(hf: PretrainedConfig, parallel: MegatronConfig, *, bf16: bool, cpu: bool,
                norm_kernel: Callable[[Tensor, Tensor, float], Tensor] | None = None) -> GPTModel:
    """This rank's ``GPTModel`` (its pipeline stage, its tensor-parallel shard), randomly initialised;
    its norms computed by ``norm_kernel`` where given (see :func:`layer_spec`)."""
    config = transformer_config(hf, parallel, bf16=bf16, cpu=cpu)
    theta, scaling = _rope(hf)
    with torch.random.fork_rng(devices=[]):
        return _gpt_model(hf, parallel, config, theta, scaling, layer_spec(config, norm_kernel))


def _gpt_model(hf: PretrainedConfig, parallel: MegatronConfig, config: TransformerConfig, theta: float, scaling: float | None,
               spec: TransformerBlockSubmodules) -> GPTModel:
    return GPTModel(
        config, spec, vocab_size=padded_vocab_size(hf.vocab_size, parallel),
        max_sequence_length=hf.max_position_embeddings, pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(), share_embeddings_and_output_weights=bool(hf.tie_word_embeddings),
        position_embedding_type="rope", rotary_base=theta, rope_scaling=scaling is not None, rope_scaling_factor=scaling or 8.0,
    )
