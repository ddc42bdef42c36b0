#!/usr/bin/env bash
# Several runs of the example, one per seed, at once against one retrieval server, then report.py's
# spread over them. Outputs in runs/search_r1_s<SEED>, each run's log beside it; a line of progress
# per run every minute. Flags after `--` go to every `agentrl train` (e.g. `--device cuda`).
#
#     bash examples/search_r1/seeds.sh 1 2 3 [-- --device cuda]
#
# Installs and builds the data as train.sh does. Exits non-zero, naming the seeds, if any run fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift
[ ${#seeds[@]} -gt 0 ] || { echo "usage: seeds.sh SEED [SEED ...] [-- agentrl train flags]" >&2; exit 2; }
bash scripts/install.sh search
python examples/search_r1/make_data.py --out examples/search_r1/data
python -c "from agentrl.models.resolve import resolve_model; resolve_model('smollm2-135m')"  # converted once, not by each run
exec bash examples/search_r1/with_retriever.sh bash examples/search_r1/seeds_run.sh "${seeds[@]}" -- "$@"
