#!/usr/bin/env bash
# Search-R1 as a Ray job: installs agentrl with the search and ray extras, builds the data, starts
# a local Ray head unless one answers already, and submits serve_and_train.sh: the job starts the
# retrieval server on its driver's node (where the rollout manager and its envs run) and trains
# with one trainer rank and one `agentrl serve` engine on CPU bundles. Flags after the script go to
# `agentrl train`. Outputs in runs/search_r1_ray.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh search
bash scripts/install.sh ray
python examples/search_r1/make_data.py --out examples/search_r1/data
export RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_ADDRESS:-}" ] && ! ray status >/dev/null 2>&1; then
  export RAY_AUTH_MODE=disabled  # a head of our own, on 127.0.0.1 only
  ray start --head --num-cpus "$(( $(nproc) > 4 ? $(nproc) : 4 ))" --dashboard-host 127.0.0.1 --disable-usage-stats
  trap 'ray stop' EXIT
fi
args=$(printf ' %q' "$@")
ray job submit --address "${RAY_DASHBOARD:-http://127.0.0.1:8265}" -- bash -c \
  "cd $(printf %q "$PWD") && exec bash examples/search_r1/serve_and_train.sh --rollout-num-gpus 1 --output-dir runs/search_r1_ray$args"
