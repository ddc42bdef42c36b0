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
bash scripts/ray_submit.sh bash examples/search_r1/serve_and_train.sh --rollout-num-gpus 1 --output-dir runs/search_r1_ray "$@"
