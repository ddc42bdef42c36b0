"""The checks a config passes when it is read: each refusal one :class:`ConfigError` line that
names the flag."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from agentrl.checkpoint import LATEST
from agentrl.compat.slime_flags import SLIME_ROLLOUT_FUNCTION, log_notes
from agentrl.config.fields import MEGATRON_FIELDS, flag_of
from agentrl.data import split_row_slice
from agentrl.envs import registration
from agentrl.envs.tool_calls import get_tool_parser
from agentrl.errors import ConfigError, RegistryError
from agentrl.precision import AUTO, resolve_bf16

if TYPE_CHECKING:
    from agentrl.config.records import EpisodeConfig, TrainConfig

log = logging.getLogger("agentrl.config")


def check_field(f: dataclasses.Field[Any], value: Any) -> None:
    """The field's choices, finiteness (floats) and range (numbers; each item of a list)."""
    flag, choices, allowed = flag_of(f.name), f.metadata.get("choices"), f.metadata.get("range")
    for item in value if isinstance(value, list) else [] if value is None else [value]:
        if choices is not None and item not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {item!r}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{flag} must be a finite number, got {item}")
        if allowed is not None and isinstance(item, (int, float)) and not isinstance(item, bool) and item not in allowed:
            raise ConfigError(f"{flag} must be {allowed}, got {item}")


def validate_episodes(cfg: EpisodeConfig) -> None:
    if cfg.prompt_data is None:
        raise ConfigError("--prompt-data is required: the tasks (.jsonl or .parquet)")
    if not split_row_slice(cfg.prompt_data)[0].is_file():
        raise ConfigError(f"--prompt-data {cfg.prompt_data}: no such file")
    _check_device(cfg.device)
    try:
        get_tool_parser(cfg.tool_parser)
    except ConfigError as e:
        raise ConfigError(f"--tool-parser: {e}") from None
    check_env(cfg.env, cfg.env_kwargs, "--env-kwargs")


def _check_device(device: str) -> None:
    kind, _, index = device.partition(":")
    if device == "cpu":
        return
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"--device must be cpu or cuda[:N], got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device here (torch.cuda.is_available() is False); use --device cpu")
    if int(index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices (cuda:0 to cuda:{torch.cuda.device_count() - 1})")


def resolve_bf16_setting(cfg: EpisodeConfig) -> None:
    """``--bf16 auto`` becomes a bool for ``--device``, once: the rest of the code sees only the bool."""
    setting: Any = cfg.bf16  # a bool, or "auto" until resolved here
    try:
        choice = resolve_bf16(setting, cfg.device)
    except ValueError as e:
        raise ConfigError(f"--bf16 must be true, false or auto, got {setting!r}") from e
    if setting == AUTO:
        log.info("%s", choice.describe())  # info, not a warning: errors stay one line, and config.json records the choice
        object.__setattr__(cfg, "bf16", choice.enabled)


def check_env(env_id: str, kwargs: dict[str, Any], flag: str) -> None:
    """``env_id`` is registered and its entry point takes ``kwargs`` (checked against its
    signature; nothing is built). Imports the env's module."""
    try:
        spec = registration.spec(env_id).resolve()
        creator = spec.load()
    except RegistryError as e:
        raise ConfigError(f"--env {env_id}: {e}") from None
    try:
        signature = inspect.signature(creator)
    except (TypeError, ValueError):  # a callable without a signature: nothing to check against
        return
    try:
        signature.bind(**{**spec.kwargs, **kwargs})
    except TypeError as e:
        raise ConfigError(f"{flag} {json.dumps(kwargs)}: env {env_id!r} does not take them ({e})") from None


def _validate_launch(cfg: TrainConfig) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    ray_only = [f for f in ("actor_num_nodes", "actor_num_gpus_per_node", "rollout_num_gpus", "colocate") if getattr(cfg, f) != defaults[f]]
    if cfg.launcher == "local":
        if ray_only:
            raise ConfigError(f"{', '.join(map(flag_of, ray_only))} place trainer ranks and engines on a Ray cluster: add --launcher ray "
                              "(or run as a Ray job); the local launcher runs one trainer and --rollout-num-engines engines")
        return
    if cfg.rollout_num_engines:
        raise ConfigError("--rollout-num-engines is the local launcher's; with --launcher ray engines come from --rollout-num-gpus "
                          "and --rollout-num-gpus-per-engine (or --colocate)")
    if cfg.placement().num_engines == 0 and not cfg.rollout_engine_urls:
        raise ConfigError("--launcher ray needs engines: --rollout-num-gpus N (with --rollout-num-gpus-per-engine), --colocate, "
                          "or --rollout-engine-urls URL ...")


def _validate_backend(cfg: TrainConfig) -> None:
    """Megatron's flags only with ``--train-backend megatron``, which needs Megatron-Core and
    (for now) runs one trainer rank."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    changed = [name for name in MEGATRON_FIELDS if getattr(cfg, name) != defaults[name]]
    if cfg.train_backend == "torch" and changed:
        raise ConfigError(f"{', '.join(flag_of(n) for n in changed)}: Megatron-LM's setting{'s' if len(changed) > 1 else ''}, "
                          "which the torch trainer does not read: add --train-backend megatron")
    if cfg.train_backend == "megatron" and not _importable("megatron.core"):
        raise ConfigError("--train-backend megatron needs Megatron-Core, which is not installed: pip install 'agentrl[megatron]'")
    parallel = cfg.megatron()  # its own checks: context parallelism, sequence parallelism, recomputation
    if parallel is None:
        return
    ranks = cfg.placement().trainer_ranks if cfg.launcher == "ray" else 1
    if ranks > 1:
        raise ConfigError(f"--train-backend megatron runs one trainer rank for now, and --actor-num-nodes x --actor-num-gpus-per-node "
                          f"ask for {ranks}: pass --actor-num-gpus-per-node 1, or --train-backend torch for data-parallel ranks")
    if parallel.model_parallel_size > 1:
        raise ConfigError(f"--tensor-model-parallel-size {parallel.tensor_model_parallel_size} x --pipeline-model-parallel-size "
                          f"{parallel.pipeline_model_parallel_size} needs {parallel.model_parallel_size} trainer ranks; "
                          "--train-backend megatron runs one for now: pass 1")
    if parallel.use_distributed_optimizer:
        raise ConfigError("--use-distributed-optimizer shards the optimizer state across data-parallel ranks; "
                          "--train-backend megatron runs one trainer rank for now, with nothing to shard: drop it")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module blocked in sys.modules
        return False


def validate_training(cfg: TrainConfig) -> None:
    _validate_launch(cfg)
    _validate_backend(cfg)
    if cfg.router_args and not cfg.backend().remote:
        raise ConfigError("--router-* options need engines: --rollout-num-engines N or --rollout-engine-urls URL ...")
    if cfg.use_dynamic_batch_size and not cfg.max_tokens_per_gpu:
        raise ConfigError("--use-dynamic-batch-size needs --max-tokens-per-gpu")
    if cfg.kl_loss_coef != 0 and not cfg.use_kl_loss:
        raise ConfigError("--kl-loss-coef is set but --use-kl-loss is not")
    for low, high in (("tis_clip_low", "tis_clip"), ("min_lr", "lr")):
        if getattr(cfg, low) > getattr(cfg, high):
            raise ConfigError(f"{flag_of(low)} {getattr(cfg, low)} must be <= {flag_of(high)} {getattr(cfg, high)}")
    _validate_eval(cfg)
    _validate_sampling(cfg)
    _validate_paths(cfg)


def _validate_eval(cfg: TrainConfig) -> None:
    if len(cfg.eval_prompt_data) % 2:
        raise ConfigError("--eval-prompt-data takes NAME PATH pairs, e.g. --eval-prompt-data math_eval eval.jsonl")
    for name, path in cfg.eval_datasets().items():
        if not split_row_slice(path)[0].is_file():
            raise ConfigError(f"--eval-prompt-data {name}: no such file {path}")
        check_env(cfg.env, cfg.env_kwargs_for(name), f"env kwargs of eval dataset {name}")
    for name in cfg.eval_dataset_env_kwargs:
        if name not in cfg.eval_datasets():
            raise ConfigError(f"eval_dataset_env_kwargs: {name!r} is not an --eval-prompt-data name ({', '.join(cfg.eval_datasets()) or 'none given'})")
    if cfg.eval_interval is not None and not cfg.eval_prompt_data:
        raise ConfigError("--eval-interval needs --eval-prompt-data")


def _validate_sampling(cfg: TrainConfig) -> None:
    if cfg.over_sampling_batch_size is not None and cfg.over_sampling_batch_size < cfg.rollout_batch_size:
        raise ConfigError(f"--over-sampling-batch-size {cfg.over_sampling_batch_size} must be >= --rollout-batch-size {cfg.rollout_batch_size}")
    for flag in ("buffer_filter_path", "mask_offpolicy_in_partial_rollout"):
        if getattr(cfg, flag) and not cfg.partial_rollout:
            raise ConfigError(f"{flag_of(flag)} needs --partial-rollout")
    if cfg.dynamic_sampling_filter_path and cfg.n_samples_per_prompt < 2:
        raise ConfigError("--dynamic-sampling-filter-path needs --n-samples-per-prompt >= 2 (a group of one has no reward spread)")
    sampling = cfg.over_sampling_batch_size is not None or cfg.dynamic_sampling_filter_path or cfg.partial_rollout
    if sampling and cfg.custom_generate_function_path:
        raise ConfigError("--over-sampling-batch-size, --dynamic-sampling-filter-path and --partial-rollout do not work with --custom-generate-function-path")
    env_limits = [flag_of(f) for f in ("max_turns", "rollout_step_timeout") if getattr(cfg, f) is not None]
    if env_limits and cfg.custom_generate_function_path:
        raise ConfigError(f"{' and '.join(env_limits)} limit an env's turns and steps, which a --custom-generate-function-path "
                          "does not play; bound its episodes with --rollout-episode-timeout")


def _validate_paths(cfg: TrainConfig) -> None:
    for name in ("output_dir", "save"):
        path = getattr(cfg, name)
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{flag_of(name)} {path}: a file is there; expected a directory")
    if cfg.load is not None and not Path(cfg.load).is_dir():
        raise ConfigError(f"--load {cfg.load}: no such checkpoint directory")


def batch_identity(cfg: TrainConfig) -> tuple[int, int]:
    """``rollout_batch_size x n_samples_per_prompt = global_batch_size x num_steps_per_rollout``,
    with the missing side derived as slime does. Returns ``(global_batch_size, num_steps)``."""
    samples = cfg.rollout_batch_size * cfg.n_samples_per_prompt
    where = f"--rollout-batch-size {cfg.rollout_batch_size} x --n-samples-per-prompt {cfg.n_samples_per_prompt} = {samples} samples"
    if cfg.num_steps_per_rollout is not None:
        steps = cfg.num_steps_per_rollout
        if samples % steps:
            raise ConfigError(f"{where} do not split into --num-steps-per-rollout {steps} equal steps")
        if cfg.global_batch_size is not None and cfg.global_batch_size * steps != samples:
            raise ConfigError(f"--global-batch-size {cfg.global_batch_size} x --num-steps-per-rollout {steps} must equal {where}")
        return samples // steps, steps
    gbs = cfg.global_batch_size or samples
    if samples % gbs:
        raise ConfigError(f"{where} are not a multiple of --global-batch-size {gbs}")
    return gbs, samples // gbs


def validate_slime(cfg: TrainConfig) -> None:
    """slime's flags: refuse what agentrl cannot honour, apply slime's ``--load`` fallback, log
    the notes of flags accepted without an effect."""
    if cfg.rollout_function_path != SLIME_ROLLOUT_FUNCTION:
        raise ConfigError(f"--rollout-function-path {cfg.rollout_function_path}: a custom rollout loop would replace agentrl's; "
                          "customise episodes with --custom-generate-function-path (per sample) or --env")
    if cfg.kl_coef != 0:
        raise ConfigError(f"--kl-coef {cfg.kl_coef}: KL reward shaping is not implemented; use --use-kl-loss --kl-loss-coef {cfg.kl_coef}")
    if cfg.rollout_max_prompt_len is not None and cfg.rollout_max_context_len is not None and cfg.rollout_max_prompt_len >= cfg.rollout_max_context_len:
        raise ConfigError(f"--rollout-max-prompt-len {cfg.rollout_max_prompt_len} must be below --rollout-max-context-len {cfg.rollout_max_context_len}")
    if cfg.use_wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError("--use-wandb needs the wandb package: pip install 'agentrl[wandb]'")
    if cfg.ref_load is not None and cfg.load is not None and not _holds_checkpoint(Path(cfg.load)):
        log.warning("--load %s holds no checkpoint: starting from --hf-checkpoint (slime's fallback to --ref-load)", cfg.load)
        object.__setattr__(cfg, "load", None)
    embedded = cfg.launcher == "local" and not cfg.rollout_num_engines and not cfg.rollout_engine_urls
    log_notes(cfg.slime_args, cfg.sglang_args, embedded=embedded)


def _holds_checkpoint(root: Path) -> bool:
    return (root / LATEST).is_file() or (root.is_dir() and any(p.is_dir() and p.name.startswith("step_") for p in root.iterdir()))
