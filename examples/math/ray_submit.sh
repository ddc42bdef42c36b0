#!/usr/bin/env bash
# The main job as a Ray job: installs agentrl with Ray, makes the data, starts a local Ray head
# unless one answers already (RAY_ADDRESS, or `ray status`), and submits `agentrl train` with the
# main job's config: one trainer rank and one `agentrl serve` engine, each on a CPU bundle, behind
# sglang-router. Flags after the script go to `agentrl train` (e.g. --actor-num-gpus-per-node 2
# --rollout-num-gpus 2, or --device cuda on a GPU cluster). Outputs in runs/math_grpo_ray.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh ray
python examples/math/make_data.py --out examples/math/data
bash scripts/ray_submit.sh agentrl train --config examples/math/grpo_smollm2.yaml --rollout-num-gpus 1 --output-dir runs/math_grpo_ray "$@"
