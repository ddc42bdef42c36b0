#!/usr/bin/env bash
# The calculator agent (agent.py, an openai-SDK program) trained with GRPO on CPU, unchanged:
# makes the data, evaluates the base model on the held-out problems, trains (flags after the
# script go to `agentrl train`, e.g. --num-rollout 2 for a smoke run), evaluates the trained model
# on the same problems, and reports both with bootstrap intervals (report.md in the run directory).
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/install.sh openai
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the program's module path, examples.calculator_agent.agent
config=examples/calculator_agent/grpo_smollm2.yaml
out=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output-dir'])" "$config") prev=""
for arg in "$@"; do [ "$prev" = "--output-dir" ] && out="$arg"; prev="$arg"; done
python examples/calculator_agent/make_data.py --out examples/calculator_agent/data
heldout() {  # MODEL OUTPUT: one greedy episode per held-out problem
  agentrl rollout --config "$config" --prompt-data examples/calculator_agent/data/eval.jsonl --num-prompts "${HELDOUT:-200}" \
    --n-samples-per-prompt 1 --rollout-temperature 0 --hf-checkpoint "$1" --output "$2"
}
mkdir -p "$out"
heldout smollm2-135m "$out/heldout_before.jsonl"
agentrl train --config "$config" "$@"
heldout "$out/hf_model" "$out/heldout_after.jsonl"
python examples/calculator_agent/report.py --before "$out/heldout_before.jsonl" --after "$out/heldout_after.jsonl" | tee "$out/report.md"
