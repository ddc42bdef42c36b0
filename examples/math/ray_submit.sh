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
export RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_ADDRESS:-}" ] && ! ray status >/dev/null 2>&1; then
  export RAY_AUTH_MODE=disabled  # a head of our own, on 127.0.0.1 only
  ray start --head --num-cpus "$(( $(nproc) > 4 ? $(nproc) : 4 ))" --dashboard-host 127.0.0.1 --disable-usage-stats
  trap 'ray stop' EXIT
fi
# The job's driver runs on the head node, in this checkout (data, config, runs/ are here); the
# trainer and engine actors import the installed agentrl. On a cluster of several nodes, run
# this from a filesystem they share (checkpoints are written by trainer rank 0).
args=$(printf ' %q' "$@")
ray job submit --address "${RAY_DASHBOARD:-http://127.0.0.1:8265}" -- bash -c \
  "cd $(printf %q "$PWD") && exec agentrl train --config examples/math/grpo_smollm2.yaml --rollout-num-gpus 1 --output-dir runs/math_grpo_ray$args"
