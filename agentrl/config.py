"""The training configuration: one typed, validated record, from YAML and command-line flags.

Flag names are slime's wherever slime has the concept (``--rollout-batch-size``,
``--n-samples-per-prompt``, ``--eps-clip`` ...), so slime scripts carry over. A YAML file given
with ``--config`` holds the same names (dashes or underscores); flags on the command line win
over the file, which wins over the defaults. Unknown names and invalid combinations are refused
with one line that names the flag (and suggests the closest one).

Each component gets only its own part: :meth:`TrainConfig.rollout`, :meth:`TrainConfig.trainer`
and :meth:`TrainConfig.loss` build the typed configs of the runner, the trainer and the loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentrl.engines.backend import BackendConfig
from agentrl.engines.flags import split_prefixed
from agentrl.errors import ConfigError
from agentrl.rollout.runner import RolloutConfig
from agentrl.trainers.algorithms import ADVANTAGE_ESTIMATORS, KL_TYPES, LossConfig
from agentrl.trainers.lr_schedule import LR_DECAY_STYLES
from agentrl.trainers.torch_trainer import TrainerConfig


def opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - argparse's word
    """A config field with its help text (shown by ``agentrl train --help``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``agentrl train`` needs. Field names are slime's flag names with underscores."""

    # --- model and task
    hf_checkpoint: str = opt("smollm2-135m", "HF model directory or built-in model name")
    env: str = opt("agentrl/Math-v0", "env id of the agent task")
    env_kwargs: dict[str, Any] = opt({}, "keyword arguments for the env (YAML only)", cli=False)
    eval_env_kwargs: dict[str, Any] = opt({}, "env keyword arguments for evaluation, over env_kwargs (YAML only)", cli=False)
    eval_dataset_env_kwargs: dict[str, dict[str, Any]] = opt(
        {}, "per eval dataset NAME, env keyword arguments over eval_env_kwargs, e.g. a no-tool control (YAML only)", cli=False)
    prompt_data: str | None = opt(None, "training tasks (.jsonl or .parquet)")
    input_key: str = opt("input", "row field holding the prompt")
    label_key: str | None = opt("label", "row field holding the label")
    metadata_key: str = opt("metadata", "row field holding metadata")
    apply_chat_template: bool = opt(True, "render prompts with the tokenizer's chat template (else plain concatenation)")
    rollout_shuffle: bool = opt(False, "shuffle the training tasks each epoch (seeded)")
    rm_type: str | None = opt(None, "reward: math, boxed_math, exact_match, f1, remote (overrides the env's own)")
    rm_url: str | None = opt(None, "URL of the remote reward model for --rm-type remote")
    custom_rm_path: str | None = opt(None, "pkg.module:fn (or slime's pkg.module.fn), async (args, sample) -> float; overrides the env's reward")
    custom_generate_function_path: str | None = opt(
        None, "slime's async generate(args, sample, sampling_params) -> Sample, played instead of --env against an SGLang-compatible server over the engine")
    # --- rollout
    num_rollout: int = opt(10, "number of rollout/train steps")
    rollout_batch_size: int = opt(8, "prompts per rollout")
    n_samples_per_prompt: int = opt(8, "samples per prompt (the GRPO group size)")
    num_steps_per_rollout: int | None = opt(None, "optimizer steps per rollout")
    global_batch_size: int | None = opt(None, "samples per optimizer step (derived when unset)")
    rollout_max_response_len: int = opt(256, "token budget of one turn")
    rollout_max_context_len: int | None = opt(None, "token budget of prompt plus all turns")
    rollout_temperature: float = opt(1.0, "sampling temperature (log-probs are of logits / temperature)")
    rollout_top_p: float = opt(1.0, "nucleus sampling")
    rollout_top_k: int = opt(-1, "top-k sampling, -1 for all")
    rollout_stop: list[str] = opt([], "strings that end a turn (kept in the output), e.g. </search> </answer>", nargs="+")
    rollout_stop_token_ids: list[int] = opt([], "token ids that end a turn besides the model's eos", nargs="+")
    max_turns: int | None = opt(None, "policy turns per episode")
    rollout_concurrency: int = opt(256, "episodes in flight")
    over_sampling_batch_size: int | None = opt(None, "prompts launched per sampling round (>= --rollout-batch-size; default: it)")
    dynamic_sampling_filter_path: str | None = opt(
        None, "group filter (args, samples) -> DynamicFilterOutput | bool, e.g. agentrl.rollout.filters.check_reward_nonzero_std (or slime's path)")
    partial_rollout: bool = opt(False, "keep the episodes aborted once the batch is full and resume them next step")
    buffer_filter_path: str | None = opt(None, "(args, rollout_id, buffer, num_samples) -> groups to resume (default: first in, first out)")
    mask_offpolicy_in_partial_rollout: bool = opt(False, "loss mask 0 on the tokens a resumed episode sampled in earlier steps")
    # --- inference engines (default: the embedded engine in this process)
    rollout_num_engines: int = opt(0, "launch this many engines behind sglang-router instead of the embedded engine")
    rollout_engine_urls: list[str] = opt([], "attach running SGLang-compatible engines (http://host:port), behind sglang-router", nargs="+")
    rollout_engine_backend: str = opt("agentrl", "what launched engines run: agentrl (agentrl serve) or sglang", choices=("agentrl", "sglang"))
    weight_sync: str = opt("distributed", "how weights reach engines over HTTP: distributed (NCCL/gloo group) or disk (safetensors)",
                           choices=("distributed", "disk"))
    sglang_args: dict[str, Any] = opt({}, "launched engines' own options under SGLang's names; on the command line --sglang-NAME VALUE", cli=False)
    router_args: dict[str, Any] = opt({}, "sglang-router's own options; on the command line --router-NAME VALUE", cli=False)
    # --- algorithm
    advantage_estimator: str = opt("grpo", "grpo, gspo, reinforce_plus_plus, reinforce_plus_plus_baseline", choices=ADVANTAGE_ESTIMATORS)
    disable_grpo_std_normalization: bool = opt(False, "GRPO advantages without dividing by the group std (Dr. GRPO)")
    eps_clip: float = opt(0.2, "PPO clip range below 1")
    eps_clip_high: float | None = opt(None, "PPO clip range above 1 (default: --eps-clip)")
    eps_clip_c: float | None = opt(None, "dual-clip constant (> 1)")
    use_kl_loss: bool = opt(False, "add a KL(policy || reference) loss term")
    kl_loss_coef: float = opt(0.0, "weight of the KL loss")
    kl_loss_type: str = opt("k1", "KL estimator", choices=KL_TYPES)
    entropy_coef: float = opt(0.0, "weight of the entropy bonus")
    calculate_per_token_loss: bool = opt(False, "token-mean loss instead of the per-sample mean")
    use_tis: bool = opt(False, "truncated importance sampling against rollout log-probs")
    tis_clip: float = opt(2.0, "upper clip of the TIS weight")
    tis_clip_low: float = opt(0.0, "lower clip of the TIS weight")
    # --- optimizer and batching
    lr: float = opt(1e-6, "AdamW learning rate")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    lr_decay_style: str = opt("constant", "learning-rate schedule after warmup", choices=LR_DECAY_STYLES)
    lr_warmup_iters: int = opt(0, "optimizer steps of linear warmup from 0 to --lr")
    lr_decay_iters: int | None = opt(None, "optimizer steps over which the lr decays to --min-lr (default: the whole run)")
    min_lr: float = opt(0.0, "the lr at the end of the decay")
    clip_grad: float = opt(1.0, "max gradient norm (0: no clipping)")
    micro_batch_size: int = opt(1, "sequences per micro-batch (without --use-dynamic-batch-size)")
    use_dynamic_batch_size: bool = opt(False, "pack micro-batches by token budget")
    max_tokens_per_gpu: int | None = opt(None, "token budget of a micro-batch")
    bf16: bool = opt(True, "bf16 autocast for training and bf16 weights for the embedded engine")
    device: str = opt("cpu", "cpu or cuda")
    train_async: bool = opt(False, "one-step-asynchronous: the next rollout overlaps this step's training")
    # --- evaluation
    eval_interval: int | None = opt(None, "evaluate every N steps (and at the start and end)")
    eval_prompt_data: list[str] = opt([], "NAME PATH pairs of eval datasets", nargs="+")
    n_samples_per_eval_prompt: int = opt(1, "samples per eval prompt")
    eval_temperature: float | None = opt(None, "eval sampling temperature (default: --rollout-temperature)")
    eval_max_prompts: int | None = opt(None, "use only the first N prompts of each eval dataset")
    # --- checkpoints and output
    output_dir: str = opt("runs/latest", "run directory: config, metrics.jsonl, dumps, plots")
    save: str | None = opt(None, "checkpoint directory (default: OUTPUT_DIR/checkpoints)")
    load: str | None = opt(None, "checkpoint directory to resume from")
    save_interval: int | None = opt(None, "save a checkpoint every N steps (and at the end)")
    seed: int = opt(1234, "seed of data order, sampling and initialisation")
    deterministic: bool = opt(False, "reproducible sampled tokens (engine decodes requests in a fixed order)")

    def __post_init__(self) -> None:
        _validate(self)
        identity = _batch_identity(self)
        object.__setattr__(self, "global_batch_size", identity[0])
        object.__setattr__(self, "num_steps_per_rollout", identity[1])

    # ------------------------------------------------------------------ component configs
    def rollout(self, *, eval: bool = False) -> RolloutConfig:  # noqa: A002
        temperature = self.rollout_temperature if not eval or self.eval_temperature is None else self.eval_temperature
        return RolloutConfig(
            n_samples_per_prompt=self.n_samples_per_eval_prompt if eval else self.n_samples_per_prompt,
            max_new_tokens=self.rollout_max_response_len, max_context_len=self.rollout_max_context_len,
            max_turns=self.max_turns, temperature=temperature, top_p=self.rollout_top_p, top_k=self.rollout_top_k,
            stop=tuple(self.rollout_stop), stop_token_ids=tuple(self.rollout_stop_token_ids),
            concurrency=self.rollout_concurrency, seed=self.seed,
        )

    def backend(self) -> BackendConfig:
        return BackendConfig(
            num_engines=self.rollout_num_engines, engine_urls=tuple(self.rollout_engine_urls), engine_backend=self.rollout_engine_backend,
            engine_args=dict(self.sglang_args), router_args=dict(self.router_args), weight_sync=self.weight_sync,
            device=self.device, bf16=self.bf16, concurrency=self.rollout_concurrency, seed=self.seed,
        )

    def trainer(self) -> TrainerConfig:
        return TrainerConfig(
            lr=self.lr, weight_decay=self.weight_decay, adam_beta1=self.adam_beta1, adam_beta2=self.adam_beta2,
            lr_decay_style=self.lr_decay_style, lr_warmup_iters=self.lr_warmup_iters, min_lr=self.min_lr,  # type: ignore[arg-type]
            lr_decay_iters=self.lr_decay_iters or self.num_rollout * (self.num_steps_per_rollout or 1),
            clip_grad=self.clip_grad, global_batch_size=self.global_batch_size or 1, micro_batch_size=self.micro_batch_size,
            use_dynamic_batch_size=self.use_dynamic_batch_size, max_tokens_per_gpu=self.max_tokens_per_gpu,
            bf16=self.bf16, temperature=self.rollout_temperature, calculate_per_token_loss=self.calculate_per_token_loss,
        )

    def loss(self) -> LossConfig:
        return LossConfig(
            eps_clip=self.eps_clip, eps_clip_high=self.eps_clip_high, eps_clip_c=self.eps_clip_c,
            sequence_ratio=self.advantage_estimator == "gspo", use_kl_loss=self.use_kl_loss,
            kl_loss_coef=self.kl_loss_coef, kl_loss_type=self.kl_loss_type, entropy_coef=self.entropy_coef,  # type: ignore[arg-type]
            use_tis=self.use_tis, tis_clip=self.tis_clip, tis_clip_low=self.tis_clip_low,
        )

    def env_kwargs_for(self, eval_dataset: str | None = None) -> dict[str, Any]:
        """The env's keyword arguments: for training (``None``) or for one eval dataset."""
        if eval_dataset is None:
            return dict(self.env_kwargs)
        return {**self.env_kwargs, **self.eval_env_kwargs, **self.eval_dataset_env_kwargs.get(eval_dataset, {})}

    def eval_datasets(self) -> dict[str, Path]:
        """``--eval-prompt-data NAME PATH ...`` as a mapping."""
        pairs = self.eval_prompt_data
        return {pairs[i]: Path(pairs[i + 1]) for i in range(0, len(pairs), 2)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate(cfg: TrainConfig) -> None:
    if cfg.prompt_data is None:
        raise ConfigError("--prompt-data is required: the training tasks (.jsonl or .parquet)")
    if not Path(cfg.prompt_data).is_file():
        raise ConfigError(f"--prompt-data {cfg.prompt_data}: no such file")
    for name in ("num_rollout", "rollout_batch_size", "n_samples_per_prompt", "rollout_max_response_len", "micro_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if cfg.rollout_num_engines < 0:
        raise ConfigError(f"--rollout-num-engines must be >= 0, got {cfg.rollout_num_engines}")
    if (cfg.sglang_args or cfg.router_args) and not cfg.backend().remote:
        raise ConfigError("--sglang-* and --router-* options need engines: --rollout-num-engines N or --rollout-engine-urls URL ...")
    if cfg.rollout_temperature <= 0:
        raise ConfigError(f"--rollout-temperature must be > 0, got {cfg.rollout_temperature}")
    if cfg.use_dynamic_batch_size and not cfg.max_tokens_per_gpu:
        raise ConfigError("--use-dynamic-batch-size needs --max-tokens-per-gpu")
    if cfg.kl_loss_coef != 0 and not cfg.use_kl_loss:
        raise ConfigError("--kl-loss-coef is set but --use-kl-loss is not")
    if cfg.eps_clip_c is not None and cfg.eps_clip_c <= 1:
        raise ConfigError(f"--eps-clip-c must be > 1, got {cfg.eps_clip_c}")
    if len(cfg.eval_prompt_data) % 2:
        raise ConfigError("--eval-prompt-data takes NAME PATH pairs, e.g. --eval-prompt-data math_eval eval.jsonl")
    for name, path in cfg.eval_datasets().items():
        if not path.is_file():
            raise ConfigError(f"--eval-prompt-data {name}: no such file {path}")
    for name, kwargs in cfg.eval_dataset_env_kwargs.items():
        if name not in cfg.eval_datasets():
            raise ConfigError(f"eval_dataset_env_kwargs: {name!r} is not an --eval-prompt-data name ({', '.join(cfg.eval_datasets()) or 'none given'})")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"eval_dataset_env_kwargs: {name}: expected a mapping of env keyword arguments, got {kwargs!r}")
    _validate_sampling(cfg)
    if cfg.eval_interval is not None and not cfg.eval_prompt_data:
        raise ConfigError("--eval-interval needs --eval-prompt-data")
    if cfg.device not in ("cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"--device must be cpu or cuda[:N], got {cfg.device!r}")


def _validate_sampling(cfg: TrainConfig) -> None:
    if cfg.over_sampling_batch_size is not None and cfg.over_sampling_batch_size < cfg.rollout_batch_size:
        raise ConfigError(f"--over-sampling-batch-size {cfg.over_sampling_batch_size} must be >= --rollout-batch-size {cfg.rollout_batch_size}")
    for flag in ("buffer_filter_path", "mask_offpolicy_in_partial_rollout"):
        if getattr(cfg, flag) and not cfg.partial_rollout:
            raise ConfigError(f"--{flag.replace('_', '-')} needs --partial-rollout")
    if cfg.dynamic_sampling_filter_path and cfg.n_samples_per_prompt < 2:
        raise ConfigError("--dynamic-sampling-filter-path needs --n-samples-per-prompt >= 2 (a group of one has no reward spread)")
    sampling = cfg.over_sampling_batch_size is not None or cfg.dynamic_sampling_filter_path or cfg.partial_rollout
    if sampling and cfg.custom_generate_function_path:
        raise ConfigError("--over-sampling-batch-size, --dynamic-sampling-filter-path and --partial-rollout do not work with --custom-generate-function-path")


def _batch_identity(cfg: TrainConfig) -> tuple[int, int]:
    """``rollout_batch_size x n_samples_per_prompt = global_batch_size x num_steps_per_rollout``,
    with the missing side derived as slime does. Returns ``(global_batch_size, num_steps)``."""
    samples = cfg.rollout_batch_size * cfg.n_samples_per_prompt
    where = f"--rollout-batch-size {cfg.rollout_batch_size} x --n-samples-per-prompt {cfg.n_samples_per_prompt} = {samples} samples"
    if cfg.num_steps_per_rollout is not None:
        steps = cfg.num_steps_per_rollout
        if steps < 1 or samples % steps:
            raise ConfigError(f"{where} do not split into --num-steps-per-rollout {steps} equal steps")
        if cfg.global_batch_size is not None and cfg.global_batch_size * steps != samples:
            raise ConfigError(f"--global-batch-size {cfg.global_batch_size} x --num-steps-per-rollout {steps} must equal {where}")
        return samples // steps, steps
    gbs = cfg.global_batch_size or samples
    if gbs < 1 or samples % gbs:
        raise ConfigError(f"{where} are not a multiple of --global-batch-size {gbs}")
    return gbs, samples // gbs


# ---------------------------------------------------------------------- loading
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        if "unrecognized arguments" in message:
            unknown = [a for a in message.split(":", 1)[1].split() if a.startswith("--")]
            hints = [f"{a} (did you mean {m[0]}?)" for a in unknown if (m := difflib.get_close_matches(a, self._flags(), n=1))]
            if hints:
                message = f"unrecognized arguments: {', '.join(hints)}"
        raise ConfigError(message)

    def _flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]


def build_parser(prog: str = "agentrl train") -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per :class:`TrainConfig` field (defaults unset, so
    only flags given on the command line override the YAML file)."""
    parser = _Parser(prog=prog, description="Train an agent with GRPO-family RL.", argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML file with the same keys as the flags")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata.get("cli", True):
            continue
        kind = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"help": f"{f.metadata['help']} (default: {f.default if f.default is not dataclasses.MISSING else f.default_factory()})"}  # type: ignore[misc]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag, type=kind, choices=f.metadata.get("choices"), nargs=f.metadata.get("nargs"), **kw)
    return parser


def load_config(argv: Sequence[str]) -> TrainConfig:
    """Defaults, then the ``--config`` YAML file, then command-line flags.

    Raises:
        ConfigError: an unknown key or flag, a bad value, or a broken batch identity.
    """
    passed_through = {}
    for prefix in ("sglang", "router"):
        passed_through[f"{prefix}_args"], argv = split_prefixed(argv, prefix)
    args = vars(build_parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file is not None:
        values.update(_read_yaml(config_file))
    values.update(args)
    for key, options in passed_through.items():
        if options:
            values[key] = {**values.get(key, {}), **options}
    try:
        return TrainConfig(**values)
    except TypeError as e:  # a YAML value of the wrong shape
        raise ConfigError(str(e)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of flag names to values")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            raise ConfigError(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0].replace('_', '-')!r}?" if close else ""))
        values[name] = _coerce(value, hints[name], f"{path}: {key}")
    return values


def _scalar_type(hint: Any) -> type:
    """The type argparse converts with: ``int`` for ``int | None`` and ``list[int]``, ``str`` for a dict."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (typing.Union, list):
        return _scalar_type(args[0])
    if typing.get_origin(hint) is dict:
        return str
    return hint


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if value is None or typing.get_origin(hint) in (list, dict):
        return value
    kind = _scalar_type(hint)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML reads 1e-6 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value
