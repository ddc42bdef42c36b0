#!/usr/bin/env bash
# Install agentrl and what it needs into the current Python, CPU build of torch by default.
# Usage: bash scripts/install.sh [extra]   (extra: test, search)
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
# A plain `torch` requirement pulls a multi-GB CUDA build; take the pinned CPU build unless a
# torch is already installed (GPU machines bring their own).
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".${extra:+[$extra]}"
