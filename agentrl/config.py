"""The configurations of ``agentrl train`` and ``agentrl rollout``: typed, validated records, from
YAML and command-line flags.

Flag names are slime's wherever slime has the concept (``--rollout-batch-size``,
``--n-samples-per-prompt``, ``--eps-clip`` ...), so slime scripts carry over. A YAML file given
with ``--config`` holds the same names (dashes or underscores); flags on the command line win
over the file, which wins over the defaults. One YAML file serves both commands: each reads the
keys it knows and leaves the other's (``agentrl rollout`` ignores ``lr``). Unknown names, values
out of range and invalid combinations are refused when the config is read, with one line that
names the flag (and suggests the closest one).

Ranges are declared on the fields (``opt(..., range=Range(gt=0, le=1))``) and checked by one
loop, with the choices and the finiteness of every float.

Each component gets only its own part: :meth:`EpisodeConfig.rollout`, :meth:`TrainConfig.trainer`
and :meth:`TrainConfig.loss` build the typed configs of the runner, the trainer and the loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import inspect
import json
import logging
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import yaml

from agentrl.checkpoint import LATEST
from agentrl.compat.slime_flags import SLIME_ROLLOUT_FUNCTION, log_notes, split_slime_flags
from agentrl.data import split_row_slice, utf8_lines
from agentrl.engines.backend import BackendConfig
from agentrl.engines.flags import split_prefixed
from agentrl.envs import registration
from agentrl.envs.tool_calls import get_tool_parser
from agentrl.errors import ConfigError, RegistryError
from agentrl.launch.placement import PlacementConfig
from agentrl.precision import AUTO, resolve_bf16
from agentrl.rollout.conversation import BridgeMode
from agentrl.rollout.runner import RolloutConfig
from agentrl.trainers.algorithms import ADVANTAGE_ESTIMATORS, KL_TYPES, LossConfig
from agentrl.trainers.base import TRAIN_BACKENDS
from agentrl.trainers.lr_schedule import LR_DECAY_STYLES
from agentrl.trainers.megatron.config import RECOMPUTE_GRANULARITIES, RECOMPUTE_METHODS, MegatronConfig
from agentrl.trainers.torch_trainer import TrainerConfig


@dataclass(frozen=True)
class Range:
    """The numbers a field allows: ``Range(gt=0, le=1)`` is (0, 1]; ``also`` lists values allowed
    outside it (``-1`` for "all")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple[float, ...] = ()

    def __contains__(self, x: float) -> bool:
        inside = (self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
        return x in self.also or (inside and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def __str__(self) -> str:
        low, high = self.ge if self.ge is not None else self.gt, self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            text = f"in {'[' if self.ge is not None else '('}{low:g}, {high:g}{']' if self.le is not None else ')'}"
        elif low is not None:
            text = f"{'>=' if self.ge is not None else '>'} {low:g}"
        else:
            text = f"{'<=' if self.le is not None else '<'} {high:g}"
        return text + "".join(f" (or {v:g})" for v in self.also)


HINT_CUTOFF = 0.75
"""How similar an unknown flag must be to a known one to be offered as "did you mean"."""

AT_LEAST_1 = Range(ge=1)
NON_NEGATIVE = Range(ge=0)
POSITIVE = Range(gt=0)
BETA = Range(ge=0, lt=1)


_Config = typing.TypeVar("_Config", bound="EpisodeConfig")
log = logging.getLogger(__name__)


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (shown by ``--help``). Keywords: ``range`` (a
    :class:`Range`, for a list each item), ``choices``, ``nargs``, ``cli=False`` (YAML only),
    ``auto=True`` (a bool field that also takes ``auto``, which ``__post_init__`` resolves)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class EpisodeConfig:
    """What is played and how: the model, the env and its tasks, sampling, limits. The part of the
    configuration that ``agentrl train`` and ``agentrl rollout`` share."""

    # --- model, env and tasks
    hf_checkpoint: str = opt("smollm2-135m", "HF model directory or built-in model name")
    env: str = opt("agentrl/Math-v0", "env id of the agent task (pkg.module:ns/Name-v0 imports pkg.module first)")
    env_kwargs: dict[str, Any] = opt({}, "keyword arguments for the env; on the command line a JSON object, e.g. '{\"format_reward\": 0.1}'")
    prompt_data: str | None = opt(None, "the tasks (.jsonl or .parquet); required")
    input_key: str = opt("input", "row field holding the prompt")
    label_key: str | None = opt("label", "row field holding the label")
    metadata_key: str = opt("metadata", "row field holding metadata")
    # --- episodes
    n_samples_per_prompt: int = opt(8, "samples per prompt (the GRPO group size)", range=AT_LEAST_1)
    rollout_max_response_len: int = opt(256, "token budget of one turn", range=AT_LEAST_1)
    rollout_max_context_len: int | None = opt(None, "token budget of prompt plus all turns (unset: the engine's)", range=AT_LEAST_1)
    rollout_temperature: float = opt(1.0, "sampling temperature (log-probs are of logits / temperature)", range=POSITIVE)
    rollout_top_p: float = opt(1.0, "nucleus sampling: sample from the most likely tokens that make up this probability", range=Range(gt=0, le=1))
    rollout_top_k: int = opt(-1, "top-k sampling, -1 for all", range=Range(ge=1, also=(-1,)))
    rollout_stop: list[str] = opt([], "strings that end a turn (kept in the output), e.g. </search> </answer>", nargs="+")
    rollout_stop_token_ids: list[int] = opt([], "token ids that end a turn besides the model's eos", nargs="+", range=NON_NEGATIVE)
    max_turns: int | None = opt(None, "policy turns per episode; the episode then ends as max_turns (unset: no limit)", range=AT_LEAST_1)
    end_on_length: bool = opt(True, "a turn cut by --rollout-max-response-len ends the episode as length; with --no-end-on-length "
                                    "the env gets the cut turn (finish_reason length) and the episode goes on")
    rollout_step_timeout: float | None = opt(None, "seconds one env.reset or env.step may take; the episode then ends as timeout "
                                                   "(unset: no limit)", range=POSITIVE)
    rollout_episode_timeout: float | None = opt(None, "seconds a whole episode may take, generation included; it then ends as timeout "
                                                      "(unset: no limit)", range=POSITIVE)
    tool_parser: str = opt("hermes", "how tool calls are read from the policy's text: hermes, llama3, none, or pkg.module:function")
    bridge_mode: str = opt("auto", "how observations join the token sequence: auto, append or segment (agentrl/rollout/conversation.py)",
                           choices=typing.get_args(BridgeMode))
    reset_seed: str = opt("group", "env reset seeds: one shared by the samples of a task (group) or one per sample (sample)",
                          choices=("group", "sample"))
    rollout_concurrency: int = opt(256, "episodes in flight", range=AT_LEAST_1)
    # --- device and seed
    bf16: bool = opt(AUTO, "bf16 weights in the engines and bf16 autocast in training: true, false, or auto (where --device computes "
                           "in bf16 natively: CUDA GPUs from Ampere on, CPUs with AVX512-BF16, AMX or ARM BF16; resolved when the "
                           "config is read)", auto=True)
    device: str = opt("cpu", "cpu or cuda[:N]")
    seed: int | None = opt(None, "derives every env reset seed and sampling seed, for reproducible episodes (unset: unseeded)")

    def __post_init__(self) -> None:
        self._validate()
        _resolve_bf16(self)  # last: its log line only for a config that loads

    def _validate(self) -> None:
        """Check the values (raising :class:`ConfigError`) and derive the unset ones; subclasses
        extend it."""
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        _validate_episodes(self)

    def rollout(self) -> RolloutConfig:
        """The rollout runner's config."""
        return RolloutConfig(
            n_samples_per_prompt=self.n_samples_per_prompt, max_new_tokens=self.rollout_max_response_len,
            max_context_len=self.rollout_max_context_len, max_turns=self.max_turns, temperature=self.rollout_temperature,
            top_p=self.rollout_top_p, top_k=self.rollout_top_k, stop=tuple(self.rollout_stop), stop_token_ids=tuple(self.rollout_stop_token_ids),
            concurrency=self.rollout_concurrency, step_timeout_s=self.rollout_step_timeout, episode_timeout_s=self.rollout_episode_timeout,
            bridge_mode=self.bridge_mode, tool_parser=self.tool_parser, end_on_length=self.end_on_length,  # type: ignore[arg-type]
            reset_seed=self.reset_seed, seed=self.seed,  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RolloutCommandConfig(EpisodeConfig):
    """Everything ``agentrl rollout`` needs: play episodes of an env against a model and write
    their trajectories."""

    n_samples_per_prompt: int = opt(1, "samples per prompt", range=AT_LEAST_1)
    rollout_temperature: float = opt(1.0, "sampling temperature, 0 for greedy (log-probs are of logits / temperature)", range=NON_NEGATIVE)
    num_prompts: int | None = opt(None, "play only the first N tasks (unset: all)", range=AT_LEAST_1)
    output: str | None = opt(None, "trajectories, one JSON record per line, written as each episode ends; required")

    def _validate(self) -> None:
        super()._validate()
        if self.output is None:
            raise ConfigError("--output is required: the file the trajectories go to, e.g. --output trajectories.jsonl")
        if Path(self.output).is_dir():
            raise ConfigError(f"--output {self.output}: a directory is there; expected a file path such as {Path(self.output) / 'trajectories.jsonl'}")


@dataclass(frozen=True)
class TrainConfig(EpisodeConfig):
    """Everything ``agentrl train`` needs: train an agent with GRPO-family RL. Field names are
    slime's flag names with underscores."""

    seed: int = opt(1234, "seed of data order, sampling and initialisation")
    # --- tasks and rewards
    eval_env_kwargs: dict[str, Any] = opt({}, "env keyword arguments for evaluation, over env_kwargs (a JSON object on the command line)")
    eval_dataset_env_kwargs: dict[str, dict[str, Any]] = opt(
        {}, "per eval dataset NAME, env keyword arguments over eval_env_kwargs, e.g. a no-tool control (a JSON object on the command line)")
    apply_chat_template: bool = opt(True, "render prompts with the tokenizer's chat template (else plain concatenation)")
    rollout_shuffle: bool = opt(False, "shuffle the training tasks each epoch (seeded)")
    rm_type: str | None = opt(None, "reward: math, boxed_math, exact_match, f1, remote (overrides the env's own)")
    rm_url: str | None = opt(None, "URL of the remote reward model for --rm-type remote")
    custom_rm_path: str | None = opt(None, "pkg.module:fn (or slime's pkg.module.fn), async (args, sample) -> float; overrides the env's reward")
    custom_generate_function_path: str | None = opt(
        None, "slime's async generate(args, sample, sampling_params) -> Sample, played instead of --env against an SGLang-compatible server over the engine")
    # --- rollout batches
    num_rollout: int = opt(10, "number of rollout/train steps", range=AT_LEAST_1)
    rollout_batch_size: int = opt(8, "prompts per rollout", range=AT_LEAST_1)
    num_steps_per_rollout: int | None = opt(None, "optimizer steps per rollout (derived when unset)", range=AT_LEAST_1)
    global_batch_size: int | None = opt(None, "samples per optimizer step (derived when unset)", range=AT_LEAST_1)
    over_sampling_batch_size: int | None = opt(None, "prompts launched per sampling round (>= --rollout-batch-size; default: it)", range=AT_LEAST_1)
    dynamic_sampling_filter_path: str | None = opt(
        None, "group filter (args, samples) -> DynamicFilterOutput | bool, e.g. agentrl.rollout.filters.check_reward_nonzero_std (or slime's path)")
    partial_rollout: bool = opt(False, "keep the episodes aborted once the batch is full and resume them next step")
    buffer_filter_path: str | None = opt(None, "(args, rollout_id, buffer, num_samples) -> groups to resume (default: first in, first out)")
    mask_offpolicy_in_partial_rollout: bool = opt(False, "loss mask 0 on the tokens a resumed episode sampled in earlier steps")
    # --- inference engines (default: the embedded engine in this process)
    rollout_num_engines: int = opt(0, "launch this many engines behind sglang-router instead of the embedded engine", range=NON_NEGATIVE)
    rollout_engine_urls: list[str] = opt([], "attach running SGLang-compatible engines (http://host:port), behind sglang-router", nargs="+")
    rollout_engine_backend: str = opt("agentrl", "what launched engines run: agentrl (agentrl serve) or sglang", choices=("agentrl", "sglang"))
    weight_sync: str = opt("distributed", "how weights reach engines over HTTP: distributed (NCCL/gloo group) or disk (safetensors)",
                           choices=("distributed", "disk"))
    sglang_args: dict[str, Any] = opt({}, "launched engines' own options under SGLang's names; on the command line --sglang-NAME VALUE", cli=False)
    router_args: dict[str, Any] = opt({}, "sglang-router's own options; on the command line --router-NAME VALUE", cli=False)
    # --- launcher and placement (slime's flags and meanings; the Ray launcher's, see README "Ray")
    launcher: str = opt("auto", "where trainer ranks, engines and the rollout manager run: local (this process), ray (Ray actors), "
                        "auto (ray when run as a Ray job, RAY_ADDRESS set; else local)", choices=("auto", "local", "ray"))
    actor_num_nodes: int = opt(1, "nodes of trainer ranks (Ray launcher)", range=AT_LEAST_1)
    actor_num_gpus_per_node: int = opt(1, "trainer ranks per node, one GPU each (one CPU bundle each with --device cpu; slime's default is 8)",
                                       range=AT_LEAST_1)
    actor_num_cpus_per_rank: int = opt(1, "CPUs of each trainer rank and engine bundle with --device cpu (Ray launcher)", range=AT_LEAST_1)
    rollout_num_gpus: int | None = opt(None, "GPUs (CPU bundles with --device cpu) of all engines together (Ray launcher; "
                                       "default with --colocate: the trainer's)", range=NON_NEGATIVE)
    rollout_num_gpus_per_engine: int = opt(1, "GPUs of one engine (its tensor-parallel size)", range=AT_LEAST_1)
    colocate: bool = opt(False, "engines share the trainer ranks' GPUs (weights by CUDA IPC on GPUs)")
    placement_timeout: float = opt(120.0, "seconds to wait for the Ray cluster to grant the placement group", range=POSITIVE)
    actor_call_timeout: float = opt(3600.0, "seconds one call to a Ray trainer or rollout actor may take (a step's rollout or training)",
                                    range=POSITIVE)
    # --- algorithm
    advantage_estimator: str = opt("grpo", "grpo, gspo, reinforce_plus_plus, reinforce_plus_plus_baseline", choices=ADVANTAGE_ESTIMATORS)
    disable_grpo_std_normalization: bool = opt(False, "GRPO advantages without dividing by the group std (Dr. GRPO)")
    eps_clip: float = opt(0.2, "PPO clip range below 1", range=NON_NEGATIVE)
    eps_clip_high: float | None = opt(None, "PPO clip range above 1 (default: --eps-clip)", range=NON_NEGATIVE)
    eps_clip_c: float | None = opt(None, "dual-clip constant", range=Range(gt=1))
    use_kl_loss: bool = opt(False, "add a KL(policy || reference) loss term")
    kl_loss_coef: float = opt(0.0, "weight of the KL loss", range=NON_NEGATIVE)
    kl_loss_type: str = opt("k1", "KL estimator", choices=KL_TYPES)
    entropy_coef: float = opt(0.0, "weight of the entropy bonus (negative: an entropy penalty)")
    calculate_per_token_loss: bool = opt(False, "token-mean loss instead of the per-sample mean")
    use_tis: bool = opt(False, "truncated importance sampling against rollout log-probs")
    tis_clip: float = opt(2.0, "upper clip of the TIS weight", range=POSITIVE)
    tis_clip_low: float = opt(0.0, "lower clip of the TIS weight (<= --tis-clip)", range=NON_NEGATIVE)
    # --- optimizer and batching
    lr: float = opt(1e-6, "AdamW learning rate", range=NON_NEGATIVE)
    weight_decay: float = opt(0.01, "AdamW weight decay", range=NON_NEGATIVE)
    adam_beta1: float = opt(0.9, "AdamW beta1", range=BETA)
    adam_beta2: float = opt(0.999, "AdamW beta2", range=BETA)
    lr_decay_style: str = opt("constant", "learning-rate schedule after warmup", choices=LR_DECAY_STYLES)
    lr_warmup_iters: int = opt(0, "optimizer steps of linear warmup from 0 to --lr", range=NON_NEGATIVE)
    lr_decay_iters: int | None = opt(None, "optimizer steps over which the lr decays to --min-lr (default: the whole run)", range=AT_LEAST_1)
    min_lr: float = opt(0.0, "the lr at the end of the decay (<= --lr)", range=NON_NEGATIVE)
    clip_grad: float = opt(1.0, "max gradient norm (0: no clipping)", range=NON_NEGATIVE)
    micro_batch_size: int = opt(1, "sequences per micro-batch (without --use-dynamic-batch-size)", range=AT_LEAST_1)
    use_dynamic_batch_size: bool = opt(False, "pack micro-batches by token budget")
    max_tokens_per_gpu: int | None = opt(None, "token budget of a micro-batch", range=AT_LEAST_1)
    train_async: bool = opt(False, "one-step-asynchronous: the next rollout overlaps this step's training")
    use_liger_kernel: bool = opt(False, "torch backend on CUDA: liger-kernel's fused RMSNorm, SwiGLU and rotary kernels "
                                        "(pip install 'agentrl[kernels]')")
    # --- training backend (slime's --train-backend), and Megatron-LM's own flags for the Megatron trainer
    train_backend: str = opt("torch", "the trainer: torch (PyTorch) or megatron (Megatron-Core: pip install 'agentrl[megatron]')",
                             choices=TRAIN_BACKENDS)
    tensor_model_parallel_size: int = opt(1, "Megatron: ranks that split each layer's matrices (only 1 for now: one trainer rank)",
                                          range=AT_LEAST_1)
    pipeline_model_parallel_size: int = opt(1, "Megatron: ranks that split the layers into stages (only 1 for now: one trainer rank)",
                                            range=AT_LEAST_1)
    context_parallel_size: int = opt(1, "Megatron: only 1 (context parallelism needs Transformer Engine's attention)", range=AT_LEAST_1)
    sequence_parallel: bool = opt(False, "Megatron: split norms and residuals along the tokens across tensor-parallel ranks")
    use_distributed_optimizer: bool = opt(False, "Megatron: shard the optimizer state across data-parallel ranks (ZeRO-1)")
    recompute_granularity: str | None = opt(None, "Megatron: recompute activations in backward, full (layers) or selective (attention core) "
                                                  "(unset: keep every activation)", choices=RECOMPUTE_GRANULARITIES)
    recompute_method: str | None = opt(None, "Megatron, with --recompute-granularity full: uniform or block", choices=RECOMPUTE_METHODS)
    recompute_num_layers: int | None = opt(None, "Megatron, with --recompute-granularity full: layers per checkpoint (uniform) or "
                                                 "checkpointed layers per stage (block)", range=AT_LEAST_1)
    make_vocab_size_divisible_by: int = opt(128, "Megatron: pad the vocabulary to a multiple of this x the tensor-parallel size",
                                            range=AT_LEAST_1)
    accumulate_allreduce_grads_in_fp32: bool = opt(True, "Megatron: gradients and their all-reduce in fp32 under bf16")
    overlap_grad_reduce: bool = opt(False, "Megatron: overlap the data-parallel gradient reduction with the backward pass")
    distributed_timeout_minutes: int = opt(10, "Megatron: minutes each collective of its process groups may take", range=AT_LEAST_1)
    # --- evaluation
    eval_interval: int | None = opt(None, "evaluate every N steps (and at the start and end)", range=AT_LEAST_1)
    skip_eval_before_train: bool = opt(False, "no evaluation at step 0 (with --eval-interval: only every N steps and at the end)")
    eval_prompt_data: list[str] = opt([], "NAME PATH pairs of eval datasets", nargs="+")
    n_samples_per_eval_prompt: int = opt(1, "samples per eval prompt", range=AT_LEAST_1)
    eval_temperature: float | None = opt(None, "eval sampling temperature, 0 for greedy (default: --rollout-temperature)", range=NON_NEGATIVE)
    eval_max_prompts: int | None = opt(None, "use only the first N prompts of each eval dataset", range=AT_LEAST_1)
    # --- checkpoints and output
    output_dir: str = opt("runs/latest", "run directory: config, metrics.jsonl, dumps, plots")
    save: str | None = opt(None, "checkpoint directory (default: OUTPUT_DIR/checkpoints)")
    load: str | None = opt(None, "checkpoint directory to resume from")
    save_interval: int | None = opt(None, "save a checkpoint every N steps (and at the end)", range=AT_LEAST_1)
    deterministic: bool = opt(False, "reproducible sampled tokens (engine decodes requests in a fixed order)")
    # --- slime compatibility: slime's flags with slime's meanings (agentrl/compat/, README "Coming from slime")
    reward_key: str | None = opt(None, "when the reward function returns a dict, the key of the number to train on (e.g. score for --rm-type dapo)")
    eval_reward_key: str | None = opt(None, "--reward-key for evaluation (default: --reward-key)")
    eval_input_key: str | None = opt(None, "--input-key of the eval datasets (default: --input-key)")
    eval_label_key: str | None = opt(None, "--label-key of the eval datasets (default: --label-key)")
    eval_top_p: float | None = opt(None, "eval top-p (default: --rollout-top-p)", range=Range(gt=0, le=1))
    eval_top_k: int | None = opt(None, "eval top-k, -1 for all (default: --rollout-top-k)", range=Range(ge=1, also=(-1,)))
    eval_max_response_len: int | None = opt(None, "eval token budget of one turn (default: --rollout-max-response-len)", range=AT_LEAST_1)
    eval_max_context_len: int | None = opt(None, "eval token budget of prompt plus turns (default: --rollout-max-context-len)", range=AT_LEAST_1)
    rollout_max_prompt_len: int | None = opt(None, "leave out training prompts longer than this many tokens, rendered (slime filters them at start)",
                                             range=AT_LEAST_1)
    rollout_skip_special_tokens: bool = opt(False, "generate functions get skip_special_tokens in sampling_params (the response text without them)")
    rollout_seed: int = opt(42, "slime's seed of GenerateState.group_sampling_seeds (with --sglang-enable-deterministic-inference); "
                                "agentrl's data order and sampling seeds derive from --seed")
    rollout_function_path: str = opt(SLIME_ROLLOUT_FUNCTION, "slime's rollout loop, which agentrl's loop is; another is refused "
                                                             "(customise episodes with --custom-generate-function-path or --env)")
    ref_load: str | None = opt(None, "slime's reference checkpoint: agentrl's reference model is --hf-checkpoint's weights; with --ref-load "
                                     "set, a --load directory holding no checkpoint starts the run fresh, as in slime")
    kl_coef: float = opt(0.0, "slime's KL reward shaping: only 0 (a KL penalty is --use-kl-loss --kl-loss-coef)", range=NON_NEGATIVE)
    loss_type: str = opt("policy_loss", "the loss: policy_loss (slime's sft_loss and custom_loss are not implemented)", choices=("policy_loss",))
    optimizer: str = opt("adam", "adam: AdamW, weight decay decoupled as in Megatron's adam", choices=("adam",))
    adam_eps: float = opt(1e-8, "AdamW epsilon", range=POSITIVE)
    lr_warmup_fraction: float | None = opt(None, "linear warmup over this fraction of the decay steps (overrides --lr-warmup-iters)",
                                           range=Range(ge=0, le=1))
    custom_config_path: str | None = opt(None, "YAML mapping whose keys become attributes of the args slime plug-ins get")
    use_wandb: bool = opt(False, "also log metrics to Weights & Biases (pip install 'agentrl[wandb]'; --wandb-mode offline needs no network)")
    wandb_project: str | None = opt(None, "W&B project")
    wandb_group: str | None = opt(None, "W&B group (also the run name's stem)")
    wandb_team: str | None = opt(None, "W&B entity (team)")
    wandb_key: str | None = opt(None, "W&B API key (default: the WANDB_API_KEY environment variable or a stored login)")
    wandb_host: str | None = opt(None, "W&B server URL")
    wandb_mode: str | None = opt(None, "online, offline (written to --wandb-dir, synced later) or disabled (default: WANDB_MODE, else online)",
                                 choices=("online", "offline", "disabled"))
    wandb_dir: str | None = opt(None, "W&B files (default: OUTPUT_DIR)")
    wandb_run_id: str | None = opt(None, "W&B run id, to resume a run")
    disable_wandb_random_suffix: bool = opt(False, "name the W&B run --wandb-group exactly, without a random suffix")
    slime_args: dict[str, Any] = opt({}, "slime flags accepted without an effect here, as slime plug-ins see them in args", cli=False)

    def _validate(self) -> None:
        super()._validate()
        if self.launcher == "auto":  # resolved once, when the config is read: a Ray job sets RAY_ADDRESS
            object.__setattr__(self, "launcher", "ray" if os.environ.get("RAY_ADDRESS") else "local")
        _validate_slime(self)
        _validate_training(self)
        identity = _batch_identity(self)
        object.__setattr__(self, "global_batch_size", identity[0])
        object.__setattr__(self, "num_steps_per_rollout", identity[1])

    # ------------------------------------------------------------------ component configs
    def rollout(self, *, eval: bool = False) -> RolloutConfig:
        """The rollout runner's config, for training or (``eval``) for evaluation."""
        config = super().rollout()
        if not eval:
            return config
        temperature = self.rollout_temperature if self.eval_temperature is None else self.eval_temperature
        overrides: dict[str, Any] = {name: value for name, value in (("top_p", self.eval_top_p), ("top_k", self.eval_top_k), ("max_new_tokens", self.eval_max_response_len),
                                                     ("max_context_len", self.eval_max_context_len)) if value is not None}
        return dataclasses.replace(config, n_samples_per_prompt=self.n_samples_per_eval_prompt, temperature=temperature, **overrides)

    def placement(self) -> PlacementConfig:
        """The Ray launcher's layout of trainer ranks and engines."""
        return PlacementConfig(
            actor_num_nodes=self.actor_num_nodes, actor_num_gpus_per_node=self.actor_num_gpus_per_node,
            rollout_num_gpus=self.rollout_num_gpus, rollout_num_gpus_per_engine=self.rollout_num_gpus_per_engine,
            colocate=self.colocate, use_gpus=self.device.startswith("cuda"), actor_num_cpus_per_rank=self.actor_num_cpus_per_rank,
        )

    def backend(self) -> BackendConfig:
        engines = self.placement().num_engines if self.launcher == "ray" else self.rollout_num_engines
        return BackendConfig(
            num_engines=engines, engine_urls=tuple(self.rollout_engine_urls), engine_backend=self.rollout_engine_backend,
            engine_args=dict(self.sglang_args), router_args=dict(self.router_args), weight_sync=self.weight_sync,
            device=self.device, bf16=self.bf16, concurrency=self.rollout_concurrency, seed=self.seed,
        )

    def trainer(self) -> TrainerConfig:
        decay_iters = self.lr_decay_iters or self.num_rollout * (self.num_steps_per_rollout or 1)
        warmup_iters = self.lr_warmup_iters if self.lr_warmup_fraction is None else round(self.lr_warmup_fraction * decay_iters)
        return TrainerConfig(
            lr=self.lr, weight_decay=self.weight_decay, adam_beta1=self.adam_beta1, adam_beta2=self.adam_beta2, adam_eps=self.adam_eps,
            lr_decay_style=self.lr_decay_style, lr_warmup_iters=warmup_iters, min_lr=self.min_lr,  # type: ignore[arg-type]
            lr_decay_iters=decay_iters,
            clip_grad=self.clip_grad, num_steps_per_rollout=self.num_steps_per_rollout or 1, micro_batch_size=self.micro_batch_size,
            use_dynamic_batch_size=self.use_dynamic_batch_size, max_tokens_per_gpu=self.max_tokens_per_gpu,
            bf16=self.bf16, temperature=self.rollout_temperature, calculate_per_token_loss=self.calculate_per_token_loss,
            use_liger_kernel=self.use_liger_kernel,
        )

    def megatron(self) -> MegatronConfig | None:
        """The Megatron trainer's parallelism and memory settings (its fields are this config's);
        ``None`` with ``--train-backend torch``."""
        if self.train_backend != "megatron":
            return None
        return MegatronConfig(**{name: getattr(self, name) for name in MEGATRON_FIELDS})

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


MEGATRON_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MegatronConfig))
"""The fields of :class:`TrainConfig` that are the Megatron trainer's (Megatron-LM's flag names)."""


# ---------------------------------------------------------------------- validation
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_field(f: dataclasses.Field[Any], value: Any) -> None:
    """The field's choices, finiteness (floats) and range (numbers; each item of a list)."""
    flag, choices, allowed = _flag(f.name), f.metadata.get("choices"), f.metadata.get("range")
    for item in value if isinstance(value, list) else [] if value is None else [value]:
        if choices is not None and item not in choices:
            raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {item!r}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{flag} must be a finite number, got {item}")
        if allowed is not None and isinstance(item, (int, float)) and not isinstance(item, bool) and item not in allowed:
            raise ConfigError(f"{flag} must be {allowed}, got {item}")


def _validate_episodes(cfg: EpisodeConfig) -> None:
    if cfg.prompt_data is None:
        raise ConfigError("--prompt-data is required: the tasks (.jsonl or .parquet)")
    if not split_row_slice(cfg.prompt_data)[0].is_file():
        raise ConfigError(f"--prompt-data {cfg.prompt_data}: no such file")
    _check_device(cfg.device)
    try:
        get_tool_parser(cfg.tool_parser)
    except ConfigError as e:
        raise ConfigError(f"--tool-parser: {e}") from None
    _check_env(cfg.env, cfg.env_kwargs, "--env-kwargs")


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


def _resolve_bf16(cfg: EpisodeConfig) -> None:
    """``--bf16 auto`` becomes a bool for ``--device``, once: the rest of the code sees only the bool."""
    setting: Any = cfg.bf16  # a bool, or "auto" until resolved here
    try:
        choice = resolve_bf16(setting, cfg.device)
    except ValueError as e:
        raise ConfigError(f"--bf16 must be true, false or auto, got {setting!r}") from e
    if setting == AUTO:
        log.info("%s", choice.describe())  # info, not a warning: errors stay one line, and config.json records the choice
        object.__setattr__(cfg, "bf16", choice.enabled)


def _check_env(env_id: str, kwargs: dict[str, Any], flag: str) -> None:
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
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    ray_only = [f for f in ("actor_num_nodes", "actor_num_gpus_per_node", "rollout_num_gpus", "colocate") if getattr(cfg, f) != defaults[f]]
    if cfg.launcher == "local":
        if ray_only:
            raise ConfigError(f"{', '.join(map(_flag, ray_only))} place trainer ranks and engines on a Ray cluster: add --launcher ray "
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
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [name for name in MEGATRON_FIELDS if getattr(cfg, name) != defaults[name]]
    if cfg.train_backend == "torch" and changed:
        raise ConfigError(f"{', '.join(_flag(n) for n in changed)}: Megatron-LM's setting{'s' if len(changed) > 1 else ''}, "
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


def _validate_training(cfg: TrainConfig) -> None:
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
            raise ConfigError(f"{_flag(low)} {getattr(cfg, low)} must be <= {_flag(high)} {getattr(cfg, high)}")
    _validate_eval(cfg)
    _validate_sampling(cfg)
    _validate_paths(cfg)


def _validate_eval(cfg: TrainConfig) -> None:
    if len(cfg.eval_prompt_data) % 2:
        raise ConfigError("--eval-prompt-data takes NAME PATH pairs, e.g. --eval-prompt-data math_eval eval.jsonl")
    for name, path in cfg.eval_datasets().items():
        if not split_row_slice(path)[0].is_file():
            raise ConfigError(f"--eval-prompt-data {name}: no such file {path}")
        _check_env(cfg.env, cfg.env_kwargs_for(name), f"env kwargs of eval dataset {name}")
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
            raise ConfigError(f"{_flag(flag)} needs --partial-rollout")
    if cfg.dynamic_sampling_filter_path and cfg.n_samples_per_prompt < 2:
        raise ConfigError("--dynamic-sampling-filter-path needs --n-samples-per-prompt >= 2 (a group of one has no reward spread)")
    sampling = cfg.over_sampling_batch_size is not None or cfg.dynamic_sampling_filter_path or cfg.partial_rollout
    if sampling and cfg.custom_generate_function_path:
        raise ConfigError("--over-sampling-batch-size, --dynamic-sampling-filter-path and --partial-rollout do not work with --custom-generate-function-path")


def _validate_paths(cfg: TrainConfig) -> None:
    for name in ("output_dir", "save"):
        path = getattr(cfg, name)
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise ConfigError(f"{_flag(name)} {path}: a file is there; expected a directory")
    if cfg.load is not None and not Path(cfg.load).is_dir():
        raise ConfigError(f"--load {cfg.load}: no such checkpoint directory")


def _batch_identity(cfg: TrainConfig) -> tuple[int, int]:
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


# ---------------------------------------------------------------------- slime compatibility
def _validate_slime(cfg: TrainConfig) -> None:
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


# ---------------------------------------------------------------------- loading
class FlagParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one :class:`ConfigError` line (with "did you mean"
    for an unknown flag) instead of a usage message."""

    def error(self, message: str) -> typing.NoReturn:
        if "unrecognized arguments" in message:
            unknown = [a for a in message.split(":", 1)[1].split() if a.startswith("--")]
            hints = [f"{a} (did you mean {m[0]}?)" for a in unknown if (m := difflib.get_close_matches(a, self._flags(), n=1, cutoff=HINT_CUTOFF))]
            if hints:
                message = f"unrecognized arguments: {', '.join(hints)}"
        raise ConfigError(message)

    def _flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object such as ``'{"topk": 3}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno}); expected an object such as '{{\"key\": 1}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {type(value).__name__}")
    return value


def auto_bool(text: str) -> bool | str:
    """An argparse type: ``true``, ``false`` or ``auto`` (any case)."""
    values: dict[str, bool | str] = {"true": True, "false": False, AUTO: AUTO}
    value = values.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true, false or auto, got {text!r}")
    return value


def build_parser(prog: str = "agentrl train", config_class: type[EpisodeConfig] = TrainConfig) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per field of ``config_class`` (defaults unset, so
    only flags given on the command line override the YAML file)."""
    description = (config_class.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    parser = FlagParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML file with the same keys as the flags (agentrl train and rollout read the same file)")
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # MISSING excluded above
        allowed = f" (range: {f.metadata['range']})" if "range" in f.metadata else ""
        kw: dict[str, Any] = {"help": f"{f.metadata['help']} (default: {default}){allowed}"}
        if f.metadata.get("auto"):  # --flag [true|false|auto] (alone: true) and --no-flag
            parser.add_argument(_flag(f.name), nargs="?", const=True, type=auto_bool, metavar="true|false|auto", **kw)
            parser.add_argument(_flag("no_" + f.name), dest=f.name, action="store_const", const=False, help=f"same as {_flag(f.name)} false")
        elif hints[f.name] is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            kind = json_object if typing.get_origin(hints[f.name]) is dict else _scalar_type(hints[f.name])
            parser.add_argument(_flag(f.name), type=kind, choices=f.metadata.get("choices"), nargs=f.metadata.get("nargs"), **kw)
    return parser


def load_config(argv: Sequence[str]) -> TrainConfig:
    """``agentrl train``'s config: defaults, then the ``--config`` YAML file, then flags.

    Raises:
        ConfigError: an unknown key or flag, a bad value, or a broken batch identity.
    """
    return _load(TrainConfig, argv, "agentrl train")


def load_rollout_config(argv: Sequence[str]) -> RolloutCommandConfig:
    """``agentrl rollout``'s config, read like :func:`load_config` (from the same YAML file)."""
    return _load(RolloutCommandConfig, argv, "agentrl rollout")


def _load(config_class: type[_Config], argv: Sequence[str], prog: str) -> _Config:
    passed_through = {}
    if config_class is TrainConfig:  # slime's flags agentrl notes or refuses, before --sglang-* is read as SGLang's
        passed_through["slime_args"], argv = split_slime_flags(argv, {_flag(f.name) for f in dataclasses.fields(TrainConfig)})
    for prefix in ("sglang", "router") if config_class is TrainConfig else ():
        passed_through[f"{prefix}_args"], argv = split_prefixed(argv, prefix)
    args = vars(build_parser(prog, config_class).parse_args(list(argv)))
    config_file = args.pop("config", None)
    values = _read_yaml(config_file, config_class) if config_file is not None else {}
    hints, auto = typing.get_type_hints(config_class), _auto_fields(config_class)
    values.update({name: _coerce(value, hints[name], _flag(name), auto=name in auto) for name, value in args.items()})
    for key, options in passed_through.items():
        if options:
            values[key] = {**values.get(key, {}), **options}
    return config_class(**values)


def _read_yaml(path: Path, config_class: type[EpisodeConfig]) -> dict[str, Any]:
    """The values of ``config_class``'s fields in a YAML file; keys of the other command are skipped."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load("".join(line for _, line in utf8_lines(path, ConfigError))) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of flag names to values")
    known = {f.name for cls in (TrainConfig, RolloutCommandConfig) for f in dataclasses.fields(cls)}
    own = {f.name for f in dataclasses.fields(config_class)}
    hints, auto = typing.get_type_hints(config_class), _auto_fields(config_class)
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0].replace('_', '-')!r}?" if close else ""))
        if name in own:
            values[name] = _coerce(value, hints[name], f"{path}: {key}", auto=name in auto)
    return values


def _scalar_type(hint: Any) -> type:
    """The type argparse converts with: ``int`` for ``int | None`` and ``list[int]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (typing.Union, list):
        return _scalar_type(args[0])
    return cast(type, hint)


def _auto_fields(config_class: type[EpisodeConfig]) -> set[str]:
    """The bool fields that also take ``auto`` (``opt(..., auto=True)``)."""
    return {f.name for f in dataclasses.fields(config_class) if f.metadata.get("auto")}


def _coerce(value: Any, hint: Any, where: str, *, auto: bool = False) -> Any:
    """A YAML value checked against the field's type (lists and mappings item by item); an int
    or a string such as ``1e-6`` (which YAML reads as a string) becomes a float where one is due.
    With ``auto`` (a bool field that also takes it) the string ``auto`` passes too."""
    if auto:
        if isinstance(value, bool) or value == AUTO:
            return value
        raise ConfigError(f"{where} must be true, false or auto, got {value!r}")
    origin = typing.get_origin(hint)
    if value is None or hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_scalar_type(hint).__name__}, got {value!r}")
        return [_coerce(item, typing.get_args(hint)[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {k: _coerce(v, typing.get_args(hint)[1], f"{where}[{k}]") for k, v in value.items()}
    kind = _scalar_type(hint)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value
