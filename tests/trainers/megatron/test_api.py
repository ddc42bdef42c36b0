"""The Megatron-Core API the backend relies on is still there: every function, class, field and
parameter it calls, and the behaviours it depends on (``thd`` rotary embeddings from per-token
frequencies; the schedule leaving 3-tuple losses unscaled under ``calculate_per_token_loss``).
An upgrade that changes one fails here with the name, before a training step fails obscurely."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable

import pytest
import torch

from agentrl.trainers.megatron import mcore
from agentrl.trainers.megatron.attention import PackedCoreAttention

with warnings.catch_warnings():  # importing Megatron-Core warns (see mcore's docstring)
    warnings.simplefilter("ignore")
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd, apply_rotary_pos_emb
    from megatron.core.pipeline_parallel import schedules
    from megatron.core.transformer.attention import CoreAttention, CoreAttentionBuilder
    from megatron.core.transformer.transformer_block import TransformerBlock

CALLED: dict[str, tuple[Callable[..., object], set[str]]] = {
    "parallel_state.initialize_model_parallel": (mcore.parallel_state.initialize_model_parallel, {
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size", "distributed_timeout_minutes"}),
    "tensor_parallel.model_parallel_cuda_manual_seed": (mcore.tensor_parallel.model_parallel_cuda_manual_seed, {"seed"}),
    "tensor_parallel.copy_to_tensor_model_parallel_region": (mcore.tensor_parallel.copy_to_tensor_model_parallel_region, {"input_", "group"}),
    "tensor_parallel.gather_from_sequence_parallel_region": (mcore.tensor_parallel.gather_from_sequence_parallel_region, {
        "input_", "tensor_parallel_output_grad", "group"}),
    "get_gpt_layer_local_spec": (mcore.get_gpt_layer_local_spec, {"qk_layernorm", "normalization"}),
    "get_num_layers_to_build": (mcore.get_num_layers_to_build, {"config"}),
    "GPTModel": (mcore.GPTModel, {"config", "transformer_layer_spec", "vocab_size", "max_sequence_length", "pre_process", "post_process",
                                  "share_embeddings_and_output_weights", "position_embedding_type", "rotary_base", "rope_scaling",
                                  "rope_scaling_factor"}),
    "TransformerBlock.forward": (TransformerBlock.forward, {"hidden_states", "attention_mask", "rotary_pos_emb", "packed_seq_params"}),
    "DistributedDataParallel": (mcore.DistributedDataParallel, {"config", "ddp_config", "module"}),
    "get_megatron_optimizer": (mcore.get_megatron_optimizer, {"config", "model_chunks", "config_overrides"}),
    "finalize_model_grads": (mcore.finalize_model_grads, {"model", "num_tokens"}),
    "forward_backward_no_pipelining": (schedules.forward_backward_no_pipelining, {
        "forward_step_func", "data_iterator", "model", "num_microbatches", "seq_length", "micro_batch_size", "forward_only"}),
    "forward_backward_pipelining_without_interleaving": (schedules.forward_backward_pipelining_without_interleaving, {
        "forward_step_func", "data_iterator", "model", "num_microbatches", "seq_length", "micro_batch_size", "forward_only"}),
    "MegatronOptimizer.sharded_state_dict": (mcore.MegatronOptimizer.sharded_state_dict, {"model_sharded_state_dict", "is_loading"}),
    "dist_checkpointing.save": (mcore.dist_checkpointing.save, {"sharded_state_dict", "checkpoint_dir"}),
    "dist_checkpointing.load": (mcore.dist_checkpointing.load, {"sharded_state_dict", "checkpoint_dir"}),
    "dist_checkpointing.load_common_state_dict": (mcore.dist_checkpointing.load_common_state_dict, {"checkpoint_dir"}),
}
FIELDS: dict[str, tuple[type, set[str]]] = {
    "TransformerConfig": (mcore.TransformerConfig, {
        "num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels", "normalization",
        "layernorm_epsilon", "gated_linear_unit", "activation_func", "add_bias_linear", "add_qkv_bias", "qk_layernorm", "hidden_dropout",
        "attention_dropout", "bias_activation_fusion", "masked_softmax_fusion", "bias_dropout_fusion", "apply_rope_fusion",
        "gradient_accumulation_fusion", "persist_layer_norm", "params_dtype", "pipeline_dtype", "bf16", "use_cpu_initialization",
        "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size", "sequence_parallel", "variable_seq_lengths",
        "moe_token_dispatcher_type", "calculate_per_token_loss", "recompute_granularity", "recompute_method", "recompute_num_layers",
        "no_sync_func", "finalize_model_grads_func"}),
    "DistributedDataParallelConfig": (mcore.DistributedDataParallelConfig, {"grad_reduce_in_fp32", "overlap_grad_reduce", "use_distributed_optimizer"}),
    "OptimizerConfig": (mcore.OptimizerConfig, {"optimizer", "lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad",
                                                "bf16", "params_dtype", "use_distributed_optimizer"}),
    "PackedSeqParams": (mcore.PackedSeqParams, {"qkv_format", "cu_seqlens_q", "cu_seqlens_kv", "max_seqlen_q", "max_seqlen_kv"}),
}
PARALLEL_STATE = ("model_parallel_is_initialized", "destroy_model_parallel", "get_tensor_model_parallel_group", "get_tensor_model_parallel_rank",
                  "get_tensor_model_parallel_world_size", "get_pipeline_model_parallel_group", "get_pipeline_model_parallel_rank",
                  "get_pipeline_model_parallel_world_size", "get_pipeline_model_parallel_last_rank", "get_context_parallel_world_size",
                  "get_data_parallel_group", "get_data_parallel_rank", "get_data_parallel_world_size", "is_pipeline_first_stage",
                  "is_pipeline_last_stage")


def test_the_installed_megatron_core_is_the_pinned_one():
    assert mcore.MCORE_VERSION == mcore.PINNED_VERSION, (
        f"megatron-core {mcore.MCORE_VERSION} is installed, the backend is pinned to and checked against {mcore.PINNED_VERSION} "
        "(pyproject's megatron extra): re-check agentrl/trainers/megatron/cpu_mode.py's call sites and mcore.KNOWN_WARNINGS before moving the pin")


@pytest.mark.parametrize("name", list(CALLED))
def test_called_with_these_parameters(name):
    function, used = CALLED[name]
    missing = used - set(inspect.signature(function).parameters)
    assert not missing, f"megatron-core {mcore.MCORE_VERSION}: {name} no longer takes {sorted(missing)}"


@pytest.mark.parametrize("name", list(FIELDS))
def test_configs_have_these_fields(name):
    cls, used = FIELDS[name]
    missing = used - {f.name for f in dataclasses.fields(cls)}
    assert not missing, f"megatron-core {mcore.MCORE_VERSION}: {name} has no field {sorted(missing)}"


def test_parallel_state_has_the_functions_used():
    missing = [name for name in PARALLEL_STATE if not callable(getattr(mcore.parallel_state, name, None))]
    assert not missing, f"megatron-core {mcore.MCORE_VERSION}: parallel_state lacks {missing}"


def test_packed_core_attention_fits_megatrons_core_attention_protocols():
    built_with = set(inspect.signature(CoreAttentionBuilder.__call__).parameters) - {"self"}
    called_with = set(inspect.signature(CoreAttention.forward).parameters) - {"self"}
    assert built_with <= set(inspect.signature(PackedCoreAttention.__init__).parameters)
    assert called_with <= set(inspect.signature(PackedCoreAttention.forward).parameters)


def test_thd_rotary_embedding_takes_per_token_frequencies():
    """Runs that continue after a shared prompt need their own positions: Megatron's ``thd`` RoPE
    applies frequencies row by row when given one row per token."""
    torch.manual_seed(0)
    tokens, freqs, cu_seqlens = torch.randn(7, 2, 8), torch.randn(7, 1, 1, 8), torch.tensor([0, 3, 7], dtype=torch.int32)
    with mcore.running(torch.device("cpu")):
        config = mcore.TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2)
        got = apply_rotary_pos_emb(tokens, freqs, config, cu_seqlens=cu_seqlens, cp_group=_OneRankGroup())
    torch.testing.assert_close(got, _apply_rotary_pos_emb_bshd(tokens[:, None], freqs)[:, 0])


def test_three_tuple_losses_are_not_rescaled_under_per_token_loss():
    """agentrl's loss weights normalise the whole step: Megatron's schedule must leave them."""
    with mcore.running(torch.device("cpu")):
        config = mcore.TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, calculate_per_token_loss=True)
        out, _ = schedules.forward_step_calc_loss(None, torch.tensor(3.0), lambda t: (t, torch.tensor(0), {}), config, None, False, 7, [],
                                                  cp_group_size=1, is_last_stage=True)
    assert float(out) == 3.0


class _OneRankGroup:
    """A stand-in context-parallel group of one rank (what ``apply_rotary_pos_emb`` asks of it)."""

    def size(self) -> int:
        return 1

    def rank(self) -> int:
        return 0
