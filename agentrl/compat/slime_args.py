"""The ``args`` namespace a slime plug-in sees: every attribute slime's own flags define, with
slime's defaults, overlaid with this run's settings.

Sources (slime 624b824): ``slime/utils/arguments.py`` (slime's flags, their defaults and the values
``slime_validate_args`` derives), ``slime/backends/sglang_utils/arguments.py`` (``--sglang-router-*``,
``--sglang-server-concurrency``), and the Megatron and SGLang attributes slime's example plug-ins
read (``context_parallel_size``, ``sglang_dp_size`` ...), at Megatron's and SGLang's defaults.

Deviations a plug-in can see, all describing what agentrl actually runs:

* ``sglang_router_ip`` / ``sglang_router_port``: the SGLang-compatible server over this run's engine.
* ``hf_checkpoint``: the resolved model directory (a built-in name such as ``smollm2-135m`` resolved).
* ``rollout_num_engines``: the engines serving requests (the embedded engine counts as one).
* ``partial_rollout``: ``False`` (generate functions are not resumed across steps).
* every ``--sglang-NAME`` option as ``sglang_NAME``; every flag agentrl accepts without acting on
  it (:mod:`agentrl.compat.slime_flags`) with the value given.
"""

from __future__ import annotations

import dataclasses
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agentrl.errors import ConfigError

SLIME_DEFAULTS: dict[str, Any] = {
    "actor_num_nodes": 1, "actor_num_gpus_per_node": 8, "rollout_num_gpus": None, "rollout_num_gpus_per_engine": 1, "num_gpus_per_node": 8,
    "colocate": False, "offload": False, "offload_train": None, "offload_rollout": None, "distributed_backend": "nccl",
    "distributed_timeout_minutes": 10, "qwen_gdn_backend": "fla", "train_env_vars": {}, "update_weight_mode": "full",
    "update_weight_transport": "nccl", "release_train": False, "update_weight_disk_dir": None, "update_weight_disk_keep_files": False,
    "update_weight_delta_encoding": "xor", "update_weight_delta_checksum": "xxh3-128", "custom_update_weight_post_write_path": None,
    "update_weight_local_checkpoint_dir": None, "custom_model_provider_path": None, "recompute_loss_function": False, "log_probs_chunk_size": -1,
    "only_train_params_name_list": None, "freeze_params_name_list": None, "freeze_indexer": False, "allgather_cp": False, "hf_checkpoint": None,
    "model_name": None, "rollout_function_path": "slime.rollout.sglang_rollout.generate_rollout", "rollout_temperature": 1.0, "rollout_top_p": 1.0,
    "rollout_top_k": -1, "rollout_max_context_len": None, "rollout_max_prompt_len": None, "rollout_max_response_len": None,
    "rollout_skip_special_tokens": False, "rollout_stop": None, "rollout_stop_token_ids": None, "rollout_shuffle": False, "rollout_seed": 42,
    "over_sampling_batch_size": None, "dynamic_sampling_filter_path": None, "partial_rollout": False, "mask_offpolicy_in_partial_rollout": False,
    "custom_generate_function_path": None, "rollout_sample_hook_path": [], "custom_rollout_log_function_path": None,
    "custom_eval_rollout_log_function_path": None, "buffer_filter_path": None, "update_weight_buffer_size": 512 * 1024**2,
    "update_weights_interval": 1, "keep_old_actor": False, "rollout_data_postprocess_path": None, "rollout_data_transport": "object-store",
    "rollout_external_engine_addrs": None, "use_fault_tolerance": False, "rollout_health_check_interval": 30.0, "rollout_health_check_timeout": 30.0,
    "rollout_health_check_first_wait": 0, "num_rollout": None, "num_epoch": None, "rollout_global_dataset": True,
    "data_source_path": "slime.rollout.data_source.RolloutDataSourceWithBuffer", "prompt_data": None, "apply_chat_template": False,
    "apply_chat_template_kwargs": {}, "input_key": "input", "label_key": None, "multimodal_keys": None, "metadata_key": "metadata",
    "tool_key": "tools", "start_rollout_id": None, "rollout_batch_size": None, "n_samples_per_prompt": 1, "global_batch_size": None,
    "num_steps_per_rollout": None, "micro_batch_size": 1, "balance_data": False, "balance_by_flops": False, "use_dynamic_batch_size": False,
    "max_tokens_per_gpu": None, "log_probs_max_tokens_per_gpu": None, "eval_function_path": None, "eval_interval": None, "eval_prompt_data": None,
    "eval_config": None, "skip_eval_before_train": False, "eval_input_key": None, "eval_label_key": None, "eval_tool_key": None,
    "n_samples_per_eval_prompt": 1, "eval_temperature": None, "eval_top_p": None, "eval_top_k": None, "eval_max_response_len": None,
    "eval_max_prompt_len": None, "eval_min_new_tokens": None, "eval_max_context_len": None, "ref_load": None, "ref_ckpt_step": None, "load": None,
    "save": None, "save_interval": None, "async_save": False, "no_save_optim": False, "save_hf": None, "seed": 1234, "clip_grad": 1.0,
    "calculate_per_token_loss": False, "lr": 1e-6, "num_critic_only_steps": 0, "megatron_config_path": None, "eps_clip": 0.2, "eps_clip_high": None,
    "eps_clip_c": None, "value_clip": 0.2, "kl_coef": 0.00, "loss_type": "policy_loss", "custom_loss_function_path": None, "kl_loss_type": "k1",
    "advantage_estimator": "grpo", "compute_advantages_and_returns": True, "custom_advantage_function_path": None, "use_kl_loss": False,
    "kl_loss_coef": 0.0, "use_unbiased_kl": False, "ref_update_interval": None, "entropy_coef": 0.0, "gamma": 1.0, "lambd": 1.0,
    "normalize_advantages": False, "grpo_std_normalization": True, "rewards_normalization": True, "use_rollout_entropy": False,
    "get_mismatch_metrics": False, "reset_optimizer_states": False, "use_stateless_adam": False, "use_rollout_logprobs": False, "use_tis": False,
    "tis_clip": 2.0, "tis_clip_low": 0, "custom_tis_function_path": None, "custom_pg_loss_reducer_function_path": None, "use_routing_replay": False,
    "use_rollout_routing_replay": False, "use_opsm": False, "opsm_delta": 1e-4, "use_opd": False, "opd_type": None, "opd_kl_coef": 1.0,
    "opd_teacher_load": None, "opd_teacher_ckpt_step": None, "use_wandb": False, "wandb_mode": None, "wandb_dir": None, "wandb_key": None,
    "wandb_host": None, "wandb_team": None, "wandb_group": None, "wandb_project": None, "wandb_random_suffix": True,
    "wandb_always_use_train_step": False, "log_multi_turn": False, "log_passrate": False, "log_reward_category": None, "log_correct_samples": False,
    "wandb_run_id": None, "use_tensorboard": False, "tb_project_name": None, "tb_experiment_name": None, "save_debug_rollout_data": None,
    "load_forge_rollout_data": None, "load_debug_rollout_data_subsample": None, "save_debug_train_data": None, "dump_details": None,
    "memory_snapshot_dir": ".", "memory_snapshot_num_steps": None, "profile_target": ["train_overall"], "memory_recorder": "torch",
    "record_memory_history": False, "check_weight_update_equal": False, "http_proxy": None, "use_distributed_post": False, "rm_type": None,
    "reward_key": None, "eval_reward_key": None, "group_rm": False, "rm_url": None, "custom_rm_path": None, "custom_reward_post_process_path": None,
    "custom_convert_samples_to_train_data_path": None, "rollout_buffer_url": None, "fetch_trajectory_retry_times": -1,
    "min_batch_collection_ratio": 1, "rollout_task_type": "math", "loss_mask_type": "qwen", "data_pad_size_multiplier": 128,
    "rollout_sample_filter_path": None, "rollout_all_samples_process_path": None, "custom_megatron_init_path": None,
    "custom_megatron_before_log_prob_hook_path": None, "custom_megatron_before_train_step_hook_path": None, "megatron_deepgemm_forward_layers": None,
    "megatron_deepgemm_forward_modules": None, "megatron_deepgemm_moe_forward_layers": None, "megatron_deepgemm_moe_forward_modules": None,
    "mtp_num_layers": None, "mtp_loss_scaling_factor": 0.2, "enable_mtp_training": False, "ci_test": False, "ci_disable_kl_checker": False,
    "ci_train_rollout_logprob_abs_diff_threshold": 0.1, "ci_save_grad_norm": None, "ci_load_grad_norm": None, "custom_config_path": None,
    "padded_vocab_size": None, "train_backend": "megatron", "debug_rollout_only": False, "debug_train_only": False, "load_debug_rollout_data": None,
    # --- slime/backends/sglang_utils/arguments.py
    "sglang_router_ip": None, "sglang_router_port": None, "sglang_router_request_timeout_secs": 14400, "sglang_server_concurrency": 512,
    "prefill_num_servers": None, "sglang_config": None, "router_log_level": "warn",
    # --- Megatron's and SGLang's defaults for the attributes slime's plug-ins read
    "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "context_parallel_size": 1, "expert_model_parallel_size": 1,
    "expert_tensor_parallel_size": None, "sequence_parallel": False, "num_layers": None, "hidden_size": None, "num_attention_heads": None,
    "num_experts": None, "moe_router_topk": 2, "max_position_embeddings": None, "optimizer": "adam", "adam_beta1": 0.9, "adam_beta2": 0.999,
    "adam_eps": 1e-8, "weight_decay": 0.01, "lr_decay_style": "linear", "lr_warmup_iters": 0, "lr_warmup_fraction": None, "lr_decay_iters": None,
    "min_lr": 0.0, "sglang_dp_size": 1, "sglang_pp_size": 1, "sglang_ep_size": 1, "sglang_enable_dp_attention": False,
    "sglang_enable_deterministic_inference": False, "sglang_speculative_algorithm": None, "router_policy": None,
}
"""Every attribute of slime's ``args`` with slime's default (see the module docstring)."""


def slime_namespace(values: Mapping[str, Any]) -> Namespace:
    """slime's ``args`` for a plug-in: :data:`SLIME_DEFAULTS`, overlaid with ``values`` (this
    run's settings under slime's names: a ``TrainConfig.to_dict()`` plus the runtime attributes),
    then the values slime derives when it validates its flags.

    Raises:
        ConfigError: ``--custom-config-path`` names a file that is not a YAML mapping.
    """
    args = dict(SLIME_DEFAULTS)
    args.update(_agentrl_values(values))
    _derive(args)
    return Namespace(**args)


def plugin_args(args: Any) -> Any:
    """What a plug-in gets as ``args``: a config dataclass (``TrainConfig``) becomes its slime
    namespace; anything else (a namespace already, a test's dict) is passed as it is."""
    if dataclasses.is_dataclass(args) and hasattr(args, "to_dict"):
        return slime_namespace(args.to_dict())
    return args


def _agentrl_values(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for name, value in out.pop("sglang_args", {}).items():
        out[f"sglang_{name}"] = value
    out.update(out.pop("slime_args", {}))
    engines = int(out.get("rollout_num_engines") or 0) + len(out.get("rollout_engine_urls") or ())
    out["rollout_num_engines"] = max(1, engines)  # the embedded engine is one engine
    if "disable_grpo_std_normalization" in out:
        out["grpo_std_normalization"] = not out.pop("disable_grpo_std_normalization")
    for name in ("rollout_stop", "rollout_stop_token_ids"):
        if name in out and not out[name]:
            out[name] = None  # slime's default for "none given"
    if out.get("custom_config_path"):
        out.update(_custom_config(Path(out["custom_config_path"])))
    return out


def _custom_config(path: Path) -> dict[str, Any]:
    """slime's ``--custom-config-path``: a YAML mapping whose keys become attributes of ``args``."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--custom-config-path {path}: {e}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise ConfigError(f"--custom-config-path {path}: the top level must be a mapping of attribute names to values")
    return {str(k): v for k, v in data.items()}


def _derive(args: dict[str, Any]) -> None:
    """The attributes ``slime_validate_args`` fills in when they are unset."""
    for name, source in (("eps_clip_high", "eps_clip"), ("eval_reward_key", "reward_key"), ("over_sampling_batch_size", "rollout_batch_size"),
                         ("eval_function_path", "rollout_function_path"), ("eval_max_context_len", "rollout_max_context_len")):
        if args.get(name) is None:
            args[name] = args.get(source)
    if args.get("use_dynamic_batch_size") and args.get("log_probs_max_tokens_per_gpu") is None:
        args["log_probs_max_tokens_per_gpu"] = args.get("max_tokens_per_gpu")
    if args.get("rollout_max_context_len") is not None and args.get("rollout_max_prompt_len") is None:
        args["rollout_max_prompt_len"] = args["rollout_max_context_len"] - 1
    if args.get("n_samples_per_prompt") == 1:
        args["grpo_std_normalization"] = False
    args["sglang_tp_size"] = args.get("rollout_num_gpus_per_engine", 1)
    args["use_critic"] = args.get("advantage_estimator") == "ppo"
    args["rollout_external"] = args.get("rollout_external_engine_addrs") is not None
