"""The config records: :class:`EpisodeConfig` (what ``agentrl train`` and ``agentrl rollout``
share), :class:`RolloutCommandConfig` and :class:`TrainConfig`, each field with its flag's help
text and range, and the typed configs of the components built from them."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.compat.slime_flags import SLIME_ROLLOUT_FUNCTION
from agentrl.config.checks import batch_identity, check_field, resolve_bf16_setting, validate_episodes, validate_slime, validate_training
from agentrl.config.fields import AT_LEAST_1, BETA, MEGATRON_FIELDS, NON_NEGATIVE, POSITIVE, Range, opt
from agentrl.engines.backend import BackendConfig
from agentrl.errors import ConfigError
from agentrl.launch.placement import PlacementConfig
from agentrl.precision import AUTO
from agentrl.rollout.conversation import BridgeMode
from agentrl.rollout.runner import RolloutConfig
from agentrl.trainers.algorithms import ADVANTAGE_ESTIMATORS, KL_TYPES, LossConfig
from agentrl.trainers.base import TRAIN_BACKENDS
from agentrl.trainers.lr_schedule import LR_DECAY_STYLES
from agentrl.trainers.megatron.config import RECOMPUTE_GRANULARITIES, RECOMPUTE_METHODS, MegatronConfig
from agentrl.trainers.torch_trainer import TrainerConfig


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
        resolve_bf16_setting(self)  # last: its log line only for a config that loads

    def _validate(self) -> None:
        """Check the values (raising :class:`ConfigError`) and derive the unset ones; subclasses
        extend it."""
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))
        validate_episodes(self)

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
    actor_setup_timeout: float = opt(900.0, "seconds a Ray actor may take to start: a trainer rank joining its group and loading the "
                                            "model, the rollout manager launching the engines and the router", range=POSITIVE)
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
    torch_compile: bool = opt(False, "torch backend: compile each decoder layer with torch.compile (fewer, fused kernels)")
    use_liger_kernel: bool = opt(False, "on CUDA: liger-kernel's fused RMSNorm, SwiGLU and rotary kernels (torch backend) or its "
                                        "RMSNorm (megatron backend) (pip install 'agentrl[kernels]')")
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
        validate_slime(self)
        validate_training(self)
        identity = batch_identity(self)
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
            use_liger_kernel=self.use_liger_kernel, torch_compile=self.torch_compile,
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
