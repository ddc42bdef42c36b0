#!/usr/bin/env bash
# The retrieval server, then `agentrl train` on the example's config (arguments go to it). Run from
# the repository root by train.sh, and as the entrypoint of the Ray job of ray_submit.sh.
set -euo pipefail
exec bash "$(dirname "$0")/with_retriever.sh" agentrl train --config examples/search_r1/grpo_smollm2.yaml "$@"
