#!/usr/bin/env bash
# The test command: installs agentrl with its test extras, then runs the suite (GPU tests skip
# themselves on machines without CUDA). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
python -m pytest -q "$@"
