#!/bin/bash
# slime's Quick Start run script (slime's scripts/run-glm4-9B.sh at slime 624b824), reshaped for
# agentrl: the same *_ARGS arrays and flag names, on SmolLM2-135M-Instruct (the built-in model) and
# the embedded engine, on CPU. Trains 3 steps; README.md beside this file walks through it.
#
#   bash examples/slime_quickstart/run.sh                    # outputs in runs/slime_quickstart
#   OUT=/tmp/q NUM_ROLLOUT=10 bash examples/slime_quickstart/run.sh --use-wandb --wandb-mode offline
#
# What changed from slime's script, and why, is on each commented line.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/slime_quickstart}
DATA=examples/slime_quickstart/data
python examples/slime_quickstart/make_data.py --out "${DATA}"   # slime: hf download dapo-math-17k and aime-2024

# MODEL_ARGS: slime sources scripts/models/glm4-9B.sh for Megatron's model flags; both agentrl trainers
# (PyTorch, and Megatron-Core with --train-backend megatron) read the architecture from --hf-checkpoint.

CKPT_ARGS=(
   --hf-checkpoint smollm2-135m             # slime: /root/GLM-Z1-9B-0414/ (a Hugging Face directory works here too)
   --ref-load smollm2-135m                  # the reference model is --hf-checkpoint's weights (no torch_dist conversion)
   --load "${OUT}/checkpoints"              # resumed when it holds a checkpoint; empty or missing: a fresh start, as in slime
   --save "${OUT}/checkpoints"
   --save-interval 20
)

ROLLOUT_ARGS=(
   --prompt-data "${DATA}/train.jsonl"
   --input-key prompt
   --label-key label
   --apply-chat-template
   --rollout-shuffle

   --rm-type slime_math                     # slime: deepscaler, which reads the answer after </think>; SmolLM2 does not think

   --num-rollout "${NUM_ROLLOUT:-3}"        # slime: 3000
   --rollout-batch-size 4                   # slime: 32
   --n-samples-per-prompt 4                 # slime: 8
   --rollout-max-response-len 48            # slime: 8192
   --rollout-temperature 1

   --global-batch-size 16                   # slime: 256 (= 32 x 8: one optimizer step per rollout)
   --balance-data                           # accepted: one trainer process has no ranks to balance
)

EVAL_ARGS=(
   --eval-interval 20
   --eval-prompt-data aime "${DATA}/eval.jsonl@[0:4]"   # slime's row slices work; slime: /root/aime-2024/aime-2024.jsonl
   --n-samples-per-eval-prompt 2            # slime: 16
   --eval-max-response-len 48               # slime: 16384
   --eval-top-p 1
)

PERF_ARGS=(
   # --tensor-model-parallel-size 2, --sequence-parallel, --pipeline-model-parallel-size 1, --recompute-*:
   # with --train-backend megatron (one trainer rank so far: parallel sizes above 1 are refused with the reason)
   --use-dynamic-batch-size
   --max-tokens-per-gpu 2048                # slime: 4608
   --no-bf16                                # fp32; the default, --bf16 auto, also picks fp32 on CPUs without native bf16, bf16 on GPUs
)

GRPO_ARGS=(
   --advantage-estimator grpo
   --use-kl-loss
   --kl-loss-coef 0.00
   --kl-loss-type low_var_kl
   --entropy-coef 0.00
   --eps-clip 0.2
   --eps-clip-high 0.28
)

OPTIMIZER_ARGS=(
   --optimizer adam
   --lr 1e-6
   --lr-decay-style constant
   --weight-decay 0.1
   --adam-beta1 0.9
   --adam-beta2 0.98
)

WANDB_ARGS=(
   # --use-wandb                            # pip install 'agentrl[wandb]'; --wandb-mode offline needs no network
   # --wandb-project slime-dev
   # --wandb-group qwen3-4B-test
   # --wandb-key ${WANDB_KEY}
)

SGLANG_ARGS=(
   # --rollout-num-gpus-per-engine 2        # engines on GPUs: the Ray launcher (--launcher ray, or as a Ray job)
   --sglang-mem-fraction-static 0.7         # noted: the embedded engine is not SGLang; applies to launched SGLang engines
)

# MISC_ARGS (--attention-dropout, --hidden-dropout, --accumulate-allreduce-grads-in-fp32,
# --attention-softmax-in-fp32, --attention-backend): Megatron's architecture flags; dropout comes from the model's config.

# slime: ray start ... && ray job submit ... -- python3 train.py --actor-num-nodes 1 --actor-num-gpus-per-node 4 --rollout-num-gpus 4
# agentrl takes the same placement flags as a Ray job (scripts/ray_submit.sh agentrl train ...); here: one process on the CPU
agentrl train --output-dir "${OUT}" \
   "${CKPT_ARGS[@]}" \
   "${ROLLOUT_ARGS[@]}" \
   "${OPTIMIZER_ARGS[@]}" \
   "${GRPO_ARGS[@]}" \
   ${WANDB_ARGS[@]+"${WANDB_ARGS[@]}"} \
   "${PERF_ARGS[@]}" \
   "${EVAL_ARGS[@]}" \
   "${SGLANG_ARGS[@]}" \
   "$@"
