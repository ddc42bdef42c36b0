"""slime's flags that ``agentrl train`` has no field for: accepted with a logged note, or refused
with the reason and what covers them (slime 624b824's ``slime/utils/arguments.py``, Megatron's
flags in slime's run scripts, slime's own ``--sglang-*`` flags).

:func:`split_slime_flags` runs before the flag parser: a flag that is a field of the config
(once another part of agentrl implements it) is never touched here. Noted flags go, with their
values, into ``TrainConfig.slime_args``, which slime plug-ins see as ``args`` attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agentrl.errors import ConfigError

log = logging.getLogger(__name__)

SLIME_ROLLOUT_FUNCTION = "slime.rollout.sglang_rollout.generate_rollout"
"""slime's default ``--rollout-function-path``: its own loop, which agentrl's training loop is."""

RAY = ("a Ray cluster setting agentrl's launcher does not take (it places trainer ranks and engines with "
       "--actor-num-nodes, --actor-num-gpus-per-node, --rollout-num-gpus, --rollout-num-gpus-per-engine, --colocate)")
MEGATRON = ("a Megatron model/parallelism flag agentrl does not take: both trainers read the model from --hf-checkpoint; --train-backend megatron "
            "takes --tensor-model-parallel-size, --pipeline-model-parallel-size, --sequence-parallel, --use-distributed-optimizer, "
            "--recompute-granularity, --recompute-method, --recompute-num-layers")
WEIGHT_SYNC = "weight sync is chosen with --weight-sync distributed|disk"

REFUSED: dict[str, str] = {
    **dict.fromkeys(("--num-gpus-per-node", "--offload", "--offload-train", "--offload-rollout", "--no-offload-train", "--no-offload-rollout",
                     "--prefill-num-servers", "--sglang-config", "--use-distributed-post", "--release-train", "--train-env-vars",
                     "--distributed-backend", "--use-fault-tolerance"), RAY),
    **dict.fromkeys(("--update-weight-mode", "--update-weight-transport", "--update-weight-disk-dir", "--update-weight-disk-keep-files",
                     "--update-weight-delta-encoding", "--update-weight-delta-checksum", "--update-weight-local-checkpoint-dir",
                     "--custom-update-weight-post-write-path"), WEIGHT_SYNC),
    **dict.fromkeys(("--spec", "--megatron-config-path", "--custom-model-provider-path", "--model-name", "--seq-length",
                     "--enable-experimental", "--allgather-cp", "--data-pad-size-multiplier", "--qwen-gdn-backend", "--recompute-loss-function",
                     "--log-probs-max-tokens-per-gpu", "--only-train-params-name-list", "--freeze-params-name-list", "--freeze-indexer",
                     "--async-save", "--no-save-optim", "--save-hf", "--ref-ckpt-step", "--enable-mtp-training", "--padded-vocab-size",
                     "--deterministic-mode", "--keep-old-actor", "--num-critic-only-steps"), MEGATRON),
    "--sglang-router-ip": "agentrl starts its own sglang-router; attach running engines with --rollout-engine-urls",
    "--sglang-router-port": "agentrl starts its own sglang-router; attach running engines with --rollout-engine-urls",
    "--rollout-external-engine-addrs": "attach running engines with --rollout-engine-urls",
    "--eval-config": "give eval datasets as --eval-prompt-data NAME PATH pairs (slices PATH@[a:b] allowed)",
    "--num-epoch": "set --num-rollout (steps) instead",
    "--custom-reward-post-process-path": "group normalisation is --advantage-estimator with --disable-grpo-std-normalization",
    "--disable-rewards-normalization": "group normalisation is --advantage-estimator with --disable-grpo-std-normalization",
    "--custom-convert-samples-to-train-data-path": "the trained tokens are the generate function's own Sample (--custom-generate-function-path)",
    "--custom-tis-function-path": "off-policy correction is --use-tis --tis-clip --tis-clip-low",
    "--use-rollout-logprobs": "old log-probs are recomputed by the trainer; off-policy correction is --use-tis",
    "--disable-compute-advantages-and-returns": "advantages are always computed: choose them with --advantage-estimator",
    "--custom-advantage-function-path": "choose advantages with --advantage-estimator",
    "--custom-loss-function-path": "the loss is --loss-type policy_loss with --eps-clip, --use-kl-loss and --entropy-coef",
    "--custom-pg-loss-reducer-function-path": "the loss reduction is the per-sample mean or --calculate-per-token-loss",
    "--normalize-advantages": "advantages of reinforce_plus_plus estimators are always whitened (--advantage-estimator)",
    "--multimodal-keys": "agentrl trains text models only",
    "--group-rm": "rewards are scored per sample (a --custom-rm-path function gets a list only for a list[Sample] return)",
    "--debug-train-only": "not supported: every step plays its rollout",
    "--debug-rollout-only": "play episodes without training with `agentrl rollout`",
    "--load-debug-rollout-data": "not supported: every step plays its rollout",
    "--rollout-buffer-url": "not supported: episodes are played by this process's runner",
    "--data-source-path": "tasks come from --prompt-data (jsonl or parquet) in --rollout-shuffle order",
    "--rollout-sample-filter-path": "set sample.remove_sample in the generate function, or filter groups with --dynamic-sampling-filter-path",
    "--rollout-all-samples-process-path": "not supported: read the rollout dumps in OUTPUT_DIR/rollouts",
    "--rollout-data-postprocess-path": "not supported: set masks in the generate function (--custom-generate-function-path)",
    "--eval-function-path": "evaluation plays --eval-prompt-data with --env or --custom-generate-function-path",
    "--ref-update-interval": "the reference model is --hf-checkpoint's weights, never updated",
    "--use-opd": "on-policy distillation is not implemented in agentrl",
    "--opd-type": "on-policy distillation is not implemented in agentrl",
    "--opd-kl-coef": "on-policy distillation is not implemented in agentrl",
    "--opd-teacher-load": "on-policy distillation is not implemented in agentrl",
    "--use-routing-replay": "MoE routing replay is not implemented (agentrl's trainers train dense Llama/Qwen2/Qwen3 models)",
    "--use-rollout-routing-replay": "MoE routing replay is not implemented (agentrl's trainers train dense Llama/Qwen2/Qwen3 models)",
    "--use-opsm": "off-policy sequence masking is not implemented in agentrl; see --use-tis",
    "--eval-min-new-tokens": "not supported by agentrl's sampling (no min_new_tokens)",
    "--eval-max-prompt-len": "not supported; --rollout-max-prompt-len filters training prompts",
    "--eval-tool-key": "not supported: tools come from the env",
    "--tool-key": "not supported: tools come from the env (--env)",
    "--apply-chat-template-kwargs": "not supported: the chat template is rendered with the tokenizer's defaults",
    "--rollout-sample-hook-path": "not supported: change the sample in the generate function",
    "--start-rollout-id": "resume with --load (the step is read from the checkpoint)",
    "--reset-optimizer-states": "not supported by agentrl's trainers",
    "--use-stateless-adam": "not supported by agentrl's trainers",
    "--value-clip": "PPO with a critic is not implemented (--advantage-estimator grpo|gspo|reinforce_plus_plus|reinforce_plus_plus_baseline)",
    "--gamma": "PPO with a critic is not implemented (--advantage-estimator grpo|gspo|reinforce_plus_plus|reinforce_plus_plus_baseline)",
    "--lambd": "PPO with a critic is not implemented (--advantage-estimator grpo|gspo|reinforce_plus_plus|reinforce_plus_plus_baseline)",
    "--use-unbiased-kl": "not supported: the KL estimators are --kl-loss-type k1|k2|k3|low_var_kl",
    "--get-mismatch-metrics": "train/train_rollout_logprob_abs_diff is always logged",
    "--http-proxy": "not supported: engines are reached directly",
    "--custom-megatron-init-path": MEGATRON,
}
"""Each flag slime has that agentrl refuses, with why and what covers it."""

MEGATRON_PREFIXES = ("--moe-", "--mtp-", "--recompute-", "--rotary-", "--megatron-", "--custom-megatron-", "--decoder-", "--expert-", "--attention-",
                     "--tensor-model-parallel", "--pipeline-model-parallel", "--context-parallel", "--qk-", "--kv-", "--q-lora-", "--v-head-",
                     "--mscale", "--num-layers", "--hidden-", "--ffn-", "--norm", "--position-embedding", "--use-rotary", "--use-rope", "--no-rope",
                     "--swiglu", "--untie-", "--add-qkv", "--apply-layernorm", "--group-query", "--num-query", "--num-attention", "--num-experts",
                     "--vocab-size", "--make-vocab", "--max-position", "--disable-bias", "--multi-latent", "--post-self-attn", "--post-mlp",
                     "--sequence-parallel", "--use-distributed-optimizer", "--optimizer-cpu-offload", "--overlap-", "--use-precision-aware",
                     "--no-gradient-accumulation", "--no-masked-softmax", "--no-check-for-nan", "--no-position-embedding", "--accumulate-allreduce",
                     "--use-gated-attention", "--attention-output-gate", "--tp", "--ep", "--pp")
"""Megatron's model and parallelism flags, by prefix (exact names for the short ones). Those that are
``TrainConfig`` fields (``--tensor-model-parallel-size``, ``--recompute-granularity`` ...) never
reach :func:`refusal`: :func:`split_slime_flags` leaves a config's own flags alone."""
_EXACT_ONLY = frozenset({"--tp", "--ep", "--pp"})

NOTED: dict[str, tuple[int, str]] = {
    "--balance-data": (0, "one trainer process: there are no data-parallel ranks to balance"),
    "--balance-by-flops": (0, "one trainer process: there are no data-parallel ranks to balance"),
    "--use-tensorboard": (0, "agentrl always writes TensorBoard logs to OUTPUT_DIR/tensorboard"),
    "--tb-project-name": (1, "TensorBoard logs go to OUTPUT_DIR/tensorboard"),
    "--tb-experiment-name": (1, "TensorBoard logs go to OUTPUT_DIR/tensorboard"),
    "--log-probs-chunk-size": (1, "agentrl always computes log-probs in chunks"),
    "--update-weight-buffer-size": (1, "weights are pushed whole by --weight-sync"),
    "--update-weights-interval": (1, "weights are pushed after every step"),
    "--save-debug-rollout-data": (1, "every step's rollout is dumped to OUTPUT_DIR/rollouts"),
    "--save-debug-train-data": (1, "every step's rollout is dumped to OUTPUT_DIR/rollouts"),
    "--dump-details": (1, "every step's rollout is dumped to OUTPUT_DIR/rollouts"),
    "--loss-mask-type": (1, "masks come from the runner's chat-template bridge or from the generate function's loss_mask"),
    "--log-multi-turn": (0, "turns, terminations and env info are always in metrics.jsonl"),
    "--log-passrate": (0, "rewards per step are in metrics.jsonl"),
    "--log-correct-samples": (0, "rollout dumps hold every sample"),
    "--log-reward-category": (1, "env info keys are averaged as rollout/info/*"),
    "--sglang-server-concurrency": (1, "sets the generate functions' GenerateState semaphore; episodes in flight are --rollout-concurrency"),
    "--sglang-router-request-timeout-secs": (1, "requests through sglang-router are not timed out by agentrl"),
    "--rollout-health-check-interval": (1, "launched engines are health-checked by agentrl's fleet monitor"),
    "--rollout-health-check-timeout": (1, "launched engines are health-checked by agentrl's fleet monitor"),
    "--rollout-health-check-first-wait": (1, "launched engines are health-checked by agentrl's fleet monitor"),
    "--check-weight-update-equal": (0, "engines report the pushed weight_version after every push"),
    "--ci-test": (0, "seen by plug-ins as args.ci_test"),
    "--memory-snapshot-dir": (1, "not recorded"),
    "--memory-snapshot-num-steps": (1, "not recorded"),
    "--record-memory-history": (0, "not recorded"),
}
"""Each flag accepted without an effect on agentrl's loop: (values it takes, the note logged)."""


def refusal(flag: str) -> str | None:
    """Why agentrl refuses slime's ``flag`` (``--name``), or ``None`` if it does not."""
    if flag in REFUSED:
        return REFUSED[flag]
    if flag in _EXACT_ONLY or any(flag.startswith(p) for p in MEGATRON_PREFIXES if p not in _EXACT_ONLY):
        return MEGATRON
    return None


def split_slime_flags(argv: Sequence[str], own_flags: Collection[str]) -> tuple[dict[str, Any], list[str]]:
    """``(noted, rest)``: the values of noted flags under their slime names (``--balance-data`` ->
    ``{"balance_data": True}``), and the other tokens. Flags in ``own_flags`` are left alone.

    Raises:
        ConfigError: one line naming every refused flag with its reason.
    """
    noted: dict[str, Any] = {}
    rest: list[str] = []
    refused: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        flag, _, inline = tokens[i].partition("=")
        i += 1
        if not flag.startswith("--") or flag in own_flags or (flag not in NOTED and refusal(flag) is None):
            rest.append(tokens[i - 1])
            continue
        values = [inline] if inline else []
        while i < len(tokens) and not tokens[i].startswith("--") and (flag not in NOTED or len(values) < NOTED[flag][0]):
            values.append(tokens[i])
            i += 1
        if flag in NOTED:
            noted[flag[2:].replace("-", "_")] = _value(values)
        else:
            refused.append(f"{flag} ({refusal(flag)})")
    if refused:
        raise ConfigError(f"slime flag{'s' if len(refused) > 1 else ''} not supported: {'; '.join(refused)}")
    return noted, rest


def _value(values: list[str]) -> Any:
    """A switch is ``True``; one value an int, float or string; several a list."""
    if not values:
        return True
    parsed = [_scalar(v) for v in values]
    return parsed[0] if len(parsed) == 1 else parsed


def _scalar(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def log_notes(noted: Mapping[str, Any], sglang_args: Mapping[str, Any], *, embedded: bool) -> None:
    """One warning per noted flag (and per ``--sglang-*`` option the embedded engine ignores)."""
    for name, value in noted.items():
        flag = "--" + name.replace("_", "-")
        log.warning("%s %s: accepted, no effect here (%s)", flag, value, NOTED[flag][1] if flag in NOTED else "a slime setting")
    if embedded:
        for name, value in sglang_args.items():
            log.warning("--sglang-%s %s: the embedded engine is not SGLang and has no such option; it applies to engines launched with "
                        "--rollout-num-engines N --rollout-engine-backend sglang", name.replace("_", "-"), value)
