#!/usr/bin/env bash
# Runs a command with the BM25 retrieval server up on 127.0.0.1:8000: starts the server, waits
# until it is healthy (at most 60 s), runs the command, and stops the server on exit, also on
# failure. Run from the repository root, after make_data.py has built the corpus.
set -euo pipefail
python -m envs_contrib.search_r1.server --corpus examples/search_r1/data/corpus.jsonl --port 8000 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for attempt in $(seq 120); do
  if python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=1)" 2>/dev/null; then break; fi
  kill -0 "$server" 2>/dev/null || { echo "the retrieval server exited before it was healthy" >&2; exit 1; }
  [ "$attempt" -lt 120 ] || { echo "the retrieval server was not healthy on 127.0.0.1:8000 after 60 s" >&2; exit 1; }
  sleep 0.5
done
"$@"
