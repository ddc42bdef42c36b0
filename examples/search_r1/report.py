"""Report of a Search-R1 run: held-out exact match with search and with the search tool disabled
(the control), by hops, at every evaluation; the paired bootstrap confidence interval of the
difference at the last one; searches per episode over training; and a plot of it all.

    python examples/search_r1/report.py --run runs/search_r1 [--plot docs/img/search_r1_training.png]

Reads ``metrics.jsonl`` and the eval dumps ``evals/<name>_step_N.jsonl`` that ``agentrl train``
writes, and the eval questions (for their ``hops``). Prints markdown tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from scipy.stats import bootstrap

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def eval_outcomes(run: Path, name: str) -> dict[int, dict[int, dict[str, Any]]]:
    """``{step: {task_index: info}}`` of eval dataset ``name`` (greedy: one sample per task)."""
    outcomes: dict[int, dict[int, dict[str, Any]]] = {}
    for path in sorted((run / "evals").glob(f"{name}_step_*.jsonl")):
        step = int(re.search(r"_step_(\d+)\.jsonl$", path.name).group(1))
        records = [json.loads(line) for line in path.read_text().splitlines()]
        outcomes[step] = {r["task_index"]: r["info"] | {"termination": r["termination"]} for r in records}
    return outcomes


def exact_match(outcomes: dict[int, dict[str, Any]], tasks: list[int]) -> float:
    return float(np.mean([bool(outcomes[t].get("correct")) for t in tasks]))


def paired_difference(with_search: dict[int, dict[str, Any]], without: dict[int, dict[str, Any]], seed: int = 0) -> dict[str, float]:
    """Mean of (correct with search - correct without) over the questions, with a 95% BCa
    bootstrap confidence interval (questions resampled, pairs kept)."""
    tasks = sorted(with_search)
    diff = np.array([float(bool(with_search[t].get("correct"))) - float(bool(without[t].get("correct"))) for t in tasks])
    if np.all(diff == diff[0]):
        return {"difference": float(diff[0]), "ci_low": float(diff[0]), "ci_high": float(diff[0])}
    ci = bootstrap((diff,), np.mean, confidence_level=0.95, n_resamples=10_000, method="BCa", random_state=seed).confidence_interval
    return {"difference": float(diff.mean()), "ci_low": float(ci.low), "ci_high": float(ci.high)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/search_r1"))
    parser.add_argument("--eval-data", type=Path, default=Path(__file__).parent / "data" / "eval.jsonl")
    parser.add_argument("--search", default="countries", help="eval dataset name with search")
    parser.add_argument("--control", default="countries_no_search", help="eval dataset name with search disabled")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    questions = [json.loads(line) for line in args.eval_data.read_text().splitlines()]
    by_hops, by_kind = defaultdict(list), defaultdict(list)
    for index, q in enumerate(questions):
        by_hops[q["hops"]].append(index)
        by_kind[(q["hops"], q.get("asks", "?"))].append(index)
    search, control = eval_outcomes(args.run, args.search), eval_outcomes(args.run, args.control)
    steps = sorted(set(search) & set(control))
    if not steps:
        raise SystemExit(f"{args.run}/evals: no step evaluated on both {args.search!r} and {args.control!r}")

    print("| step | EM with search | 1-hop | 2-hop | searches/episode | EM search disabled | 1-hop | 2-hop |")
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for step in steps:
        s, c = search[step], control[step]
        row = {"step": step, "em_search": exact_match(s, sorted(s)), "em_control": exact_match(c, sorted(c)),
               "searches": float(np.mean([s[t]["searches"] for t in s]))}
        row |= {f"em_search_{h}hop": exact_match(s, ts) for h, ts in by_hops.items()}
        row |= {f"em_control_{h}hop": exact_match(c, ts) for h, ts in by_hops.items()}
        table.append(row)
        print(f"| {step} | {row['em_search']:.3f} | {row['em_search_1hop']:.3f} | {row['em_search_2hop']:.3f} | {row['searches']:.2f} "
              f"| {row['em_control']:.3f} | {row['em_control_1hop']:.3f} | {row['em_control_2hop']:.3f} |")
    last = steps[-1]
    print(f"\n| step {last}: question | n | EM with search | EM search disabled |\n|---|---|---|---|")
    for (h, asks), ts in sorted(by_kind.items()):
        print(f"| {h}-hop, asks {asks} | {len(ts)} | {exact_match(search[last], ts):.3f} | {exact_match(control[last], ts):.3f} |")
    final = paired_difference(search[last], control[last])
    print(f"\nstep {last}: EM with search - EM search disabled = {final['difference']:.3f} "
          f"(95% bootstrap CI {final['ci_low']:.3f} to {final['ci_high']:.3f}, {len(search[last])} questions)")

    training = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in training if "rollout/reward_mean" in r]
    print("\n| step | reward | searches/episode | exact match | retrieved the answer |")
    print("|---|---|---|---|---|")
    for r in training[::5] + ([training[-1]] if len(training) % 5 != 1 else []):
        print(f"| {r['step']} | {r['rollout/reward_mean']:.3f} | {r['rollout/info/searches']:.2f} | {r['rollout/info/correct']:.3f} "
              f"| {r.get('rollout/info/retrieved_answer', float('nan')):.3f} |")
    if args.plot:
        plot(training, table, args.plot, questions=len(questions))
    print(json.dumps({"run": str(args.run), "questions": len(questions), "evals": table, "final": final}))


def plot(training: list[dict[str, Any]], table: list[dict[str, Any]], path: Path, *, questions: int) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in training]
    left.plot(steps, [r["rollout/info/searches"] for r in training], label="searches per episode")
    left.plot(steps, [r["rollout/info/correct"] for r in training], label="exact match (training)")
    left.set_xlabel("step")
    left.set_title("training rollouts")
    left.legend()
    right.plot([r["step"] for r in table], [r["em_search"] for r in table], marker="o", label="with search")
    right.plot([r["step"] for r in table], [r["em_control"] for r in table], marker="o", label="search disabled")
    right.set_xlabel("step")
    right.set_ylabel("exact match")
    right.set_title(f"{questions} held-out questions, greedy")
    right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
