#!/usr/bin/env bash
# Submits a command as a Ray job from the repo root: starts a local Ray head unless one answers
# already (RAY_ADDRESS, or `ray status`; stopped again on exit), then `ray job submit`s
#   cd <this checkout> && exec COMMAND ARGS...
# (arguments quoted as given). The job's driver runs on the head node, in this checkout (data,
# config and runs/ are here); the trainer and engine actors import the installed agentrl. On a
# cluster of several nodes, run it from a filesystem they share (trainer rank 0 writes checkpoints).
#   usage: bash scripts/ray_submit.sh COMMAND [ARGS...]   (RAY_DASHBOARD: the head's job API)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: scripts/ray_submit.sh COMMAND [ARGS...]" >&2; exit 2; }
export RAY_USAGE_STATS_ENABLED=0
if [ -z "${RAY_ADDRESS:-}" ] && ! ray status >/dev/null 2>&1; then
  export RAY_AUTH_MODE=disabled  # a head of our own, on 127.0.0.1 only
  ray start --head --num-cpus "$(( $(nproc) > 4 ? $(nproc) : 4 ))" --dashboard-host 127.0.0.1 --disable-usage-stats
  trap 'ray stop' EXIT
fi
ray job submit --address "${RAY_DASHBOARD:-http://127.0.0.1:8265}" -- bash -c "cd $(printf %q "$PWD") && exec$(printf ' %q' "$@")"
