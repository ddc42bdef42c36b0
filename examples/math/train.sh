#!/usr/bin/env bash
# The main job: installs agentrl, makes the example's data, trains SmolLM2-135M-Instruct with
# GRPO on the math env (CPU), evaluating on 500 held-out problems before, during and after.
# Outputs in runs/math_grpo: metrics.jsonl, reward_curves.png, rollout dumps, checkpoints, hf_model.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh
python examples/math/make_data.py --out examples/math/data
agentrl train --config examples/math/grpo_smollm2.yaml "$@"
