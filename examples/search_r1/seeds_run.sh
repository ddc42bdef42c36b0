#!/usr/bin/env bash
# seeds.sh's part under the retrieval server: one `agentrl train` per seed at once (flags after
# `--` go to each), each run's last progress line every minute, then report.py over the runs.
#
#     bash examples/search_r1/with_retriever.sh bash examples/search_r1/seeds_run.sh 1 2 3 [-- flags]
set -euo pipefail
seeds=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do seeds+=("$1"); shift; done
[ $# -gt 0 ] && shift
declare -A pids
runs=()
mkdir -p runs
for seed in "${seeds[@]}"; do
  out=runs/search_r1_s$seed
  agentrl train --config examples/search_r1/grpo_smollm2.yaml --seed "$seed" --output-dir "$out" "$@" > "$out.log" 2>&1 &
  pids[$seed]=$!
  runs+=("$out")
  echo "seed $seed: log $out.log"
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((tick = 1; ; tick++)); do
  sleep 5
  running=0
  for seed in "${seeds[@]}"; do
    kill -0 "${pids[$seed]}" 2>/dev/null || continue
    running=$((running + 1))
    if ((tick % 12 == 0)); then
      echo "seed $seed: $(tr '\r' '\n' < "runs/search_r1_s$seed.log" | sed 's/\x1b\[[0-9;]*[A-Za-z]//g' | grep -v '^\s*$' | tail -n 1 | cut -c1-160)"
    fi
  done
  [ "$running" -gt 0 ] || break
done
failed=()
for seed in "${seeds[@]}"; do
  wait "${pids[$seed]}" || failed+=("$seed")
done
trap - EXIT
if [ ${#failed[@]} -gt 0 ]; then
  echo "runs failed for seeds: ${failed[*]} (see runs/search_r1_s<SEED>.log)" >&2
  exit 1
fi
python examples/search_r1/report.py --run "${runs[@]}"
