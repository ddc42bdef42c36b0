"""Held-out reward and tool-call success of the calculator agent before and after training, with
a paired bootstrap confidence interval of each difference (problems resampled, pairs kept).

    python examples/calculator_agent/report.py --before runs/calculator_agent/heldout_before.jsonl \\
        --after runs/calculator_agent/heldout_after.jsonl

Reads two ``agentrl rollout`` outputs of the same held-out problems (one greedy sample each). An
episode that failed (env error, timeout, abort) counts as wrong and no tool success, and is
counted. ``correct`` is the held-out reward without the training's tool-use shaping. Prints a markdown table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def outcomes(path: Path) -> dict[int, dict[str, float]]:
    """Per held-out problem: reward and tool success (``info`` of the program)."""
    result = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        ok = record["termination"] not in ("env_error", "timeout", "abort")
        info = record["info"]
        result[record["task_index"]] = {"correct": float(ok and bool(info.get("correct"))), "tool_success": float(ok and bool(info.get("tool_success"))),
                                        "failed": float(not ok)}
    return result


def paired(before: dict[int, dict[str, float]], after: dict[int, dict[str, float]], key: str, seed: int = 0) -> dict[str, float]:
    """Means before and after, their difference and its 95% percentile bootstrap interval."""
    tasks = sorted(set(before) & set(after))
    diff = np.array([after[t][key] - before[t][key] for t in tasks])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(10_000, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"before": float(np.mean([before[t][key] for t in tasks])), "after": float(np.mean([after[t][key] for t in tasks])),
            "difference": float(diff.mean()), "ci_low": float(low), "ci_high": float(high), "problems": len(tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    args = parser.parse_args()
    before, after = outcomes(args.before), outcomes(args.after)
    table: dict[str, Any] = {key: paired(before, after, key) for key in ("correct", "tool_success")}
    print("| held-out (greedy) | before | after | difference (95% bootstrap CI) |\n|---|---|---|---|")
    for key, row in table.items():
        print(f"| {key} | {row['before']:.3f} | {row['after']:.3f} | {row['difference']:+.3f} ({row['ci_low']:+.3f} to {row['ci_high']:+.3f}) |")
    table["failed_episodes"] = {"before": sum(o["failed"] for o in before.values()), "after": sum(o["failed"] for o in after.values())}
    print(json.dumps(table))


if __name__ == "__main__":
    main()
