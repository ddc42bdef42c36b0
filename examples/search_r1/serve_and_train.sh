#!/usr/bin/env bash
# Starts the BM25 retrieval server on 127.0.0.1:8000, waits until it is healthy, trains (arguments
# go to `agentrl train`), and stops the server on exit, also on failure. Run from the repository
# root by train.sh, and as the entrypoint of the Ray job of ray_submit.sh (the job starts it).
set -euo pipefail
python -m envs_contrib.search_r1.server --corpus examples/search_r1/data/corpus.jsonl --port 8000 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  if python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=1)" 2>/dev/null; then break; fi
  kill -0 "$server" 2>/dev/null || { echo "the retrieval server exited before it was healthy" >&2; exit 1; }
  sleep 0.5
done
agentrl train --config examples/search_r1/grpo_smollm2.yaml "$@"
