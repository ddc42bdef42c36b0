#!/usr/bin/env bash
# Search-R1 on CPU: installs agentrl with the search extra, builds the countryinfo corpus and
# questions, then serve_and_train.sh: the BM25 retrieval server on 127.0.0.1:8000, training (flags
# after the script go to `agentrl train`), the server stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh search
python examples/search_r1/make_data.py --out examples/search_r1/data
bash examples/search_r1/serve_and_train.sh "$@"
