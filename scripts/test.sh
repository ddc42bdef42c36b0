#!/usr/bin/env bash
# The test command: installs agentrl with its test extras, lints (ruff) and type-checks (mypy,
# strict on agentrl/), then runs the suite (GPU tests skip themselves on machines without CUDA).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
python -m ruff check .
python -m mypy
python -m pytest -q "$@"
