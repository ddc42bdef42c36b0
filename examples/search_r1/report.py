"""Report of a Search-R1 run: held-out exact match with search and with the search tool disabled
(the control), by hops, at every evaluation; the paired bootstrap confidence interval of the
difference at the last one; searches per episode over training; and a plot of it all. Given
several runs (seeds), also the mean, standard deviation and range over them of the last
evaluation's exact match, overall and per question type.

    python examples/search_r1/report.py --run runs/search_r1_s1 [runs/search_r1_s2 ...] [--plot docs/img/search_r1_training.png]

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
    parser.add_argument("--run", type=Path, nargs="+", default=[Path("runs/search_r1")], help="one run, or several (seeds) for the spread")
    parser.add_argument("--eval-data", type=Path, default=Path(__file__).parent / "data" / "eval.jsonl")
    parser.add_argument("--search", default="countries", help="eval dataset name with search")
    parser.add_argument("--control", default="countries_no_search", help="eval dataset name with search disabled")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()

    questions = [json.loads(line) for line in args.eval_data.read_text().splitlines()]
    groups = question_groups(questions)
    runs = [report_run(run, groups, args.search, args.control) for run in args.run]
    if len(runs) > 1:
        print_spread(runs)
    if args.plot:
        plot(runs, args.plot, questions=len(questions))
    print(json.dumps({"questions": len(questions), "runs": runs, "spread": spread(runs) if len(runs) > 1 else None}))


def question_groups(questions: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Task indices of every question, of each hop count and of each (hops, asks) type."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, q in enumerate(questions):
        groups["all"].append(index)
        groups[f"{q['hops']}hop"].append(index)
        groups[f"{q['hops']}-hop {q.get('asks', '?')}"].append(index)
    return dict(groups)


def report_run(run: Path, groups: dict[str, list[int]], search_name: str, control_name: str) -> dict[str, Any]:
    """Prints one run's tables; returns its evals, training rows and the last eval per question type."""
    search, control = eval_outcomes(run, search_name), eval_outcomes(run, control_name)
    steps = sorted(set(search) & set(control))
    if not steps:
        raise SystemExit(f"{run}/evals: no step evaluated on both {search_name!r} and {control_name!r}")
    evaluated = set.intersection(*(set(search[step]) & set(control[step]) for step in steps))  # all, or --eval-max-prompts of them
    groups = {kind: kept for kind, tasks in groups.items() if (kept := [t for t in tasks if t in evaluated])}
    print(f"## {run}\n")
    print("| step | EM with search | 1-hop | 2-hop | searches/episode | EM search disabled | 1-hop | 2-hop |\n|---|---|---|---|---|---|---|---|")
    table = [eval_row(step, search[step], control[step], groups) for step in steps]
    last = steps[-1]
    by_type = {kind: {"n": len(ts), "em_search": exact_match(search[last], ts), "em_control": exact_match(control[last], ts)}
               for kind, ts in sorted(groups.items()) if "-hop " in kind}
    print(f"\n| step {last}: question | n | EM with search | EM search disabled |\n|---|---|---|---|")
    for kind, row in by_type.items():
        print(f"| {kind} | {row['n']} | {row['em_search']:.3f} | {row['em_control']:.3f} |")
    for name, outcomes in ((search_name, search[last]), (control_name, control[last])):
        aborted = sum(info["termination"] == "abort" for info in outcomes.values())
        if aborted:
            print(f"\nstep {last}, {name}: {aborted} of {len(outcomes)} episodes aborted (an engine error, in the run's log), counted as wrong")
    final = paired_difference(search[last], control[last])
    print(f"\nstep {last}: EM with search - EM search disabled = {final['difference']:.3f} "
          f"(95% bootstrap CI {final['ci_low']:.3f} to {final['ci_high']:.3f}, {len(search[last])} questions)")
    training = training_rows(run)
    return {"run": str(run), "step": last, "evals": table, "by_type": by_type, "final": final, "training": training}


def eval_row(step: int, s: dict[int, dict[str, Any]], c: dict[int, dict[str, Any]], groups: dict[str, list[int]]) -> dict[str, Any]:
    """One evaluation's exact match with search and without, overall and by hops; printed as a row."""
    row: dict[str, Any] = {"step": step, "em_search": exact_match(s, groups["all"]), "em_control": exact_match(c, groups["all"]),
                           "searches": float(np.mean([s[t]["searches"] for t in s]))}
    for hops in ("1hop", "2hop"):
        row |= {f"em_search_{hops}": exact_match(s, groups[hops]), f"em_control_{hops}": exact_match(c, groups[hops])}
    print(f"| {step} | {row['em_search']:.3f} | {row['em_search_1hop']:.3f} | {row['em_search_2hop']:.3f} | {row['searches']:.2f} "
          f"| {row['em_control']:.3f} | {row['em_control_1hop']:.3f} | {row['em_control_2hop']:.3f} |")
    return row


def training_rows(run: Path) -> list[dict[str, Any]]:
    """The training steps' metrics of ``run``, every fifth printed as a table."""
    training = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in training if "rollout/reward_mean" in r]
    print("\n| step | reward | searches/episode | exact match | retrieved the answer |\n|---|---|---|---|---|")
    for r in training[::5] + ([training[-1]] if len(training) % 5 != 1 else []):
        print(f"| {r['step']} | {r['rollout/reward_mean']:.3f} | {r['rollout/info/searches']:.2f} | {r['rollout/info/correct']:.3f} "
              f"| {r.get('rollout/info/retrieved_answer', float('nan')):.3f} |")
    print()
    return training


def spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min and max over runs of the last eval's exact match,
    overall and per question type, with search and without."""
    values: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        values["all/em_search"].append(r["evals"][-1]["em_search"])
        values["all/em_control"].append(r["evals"][-1]["em_control"])
        for kind, row in r["by_type"].items():
            values[f"{kind}/em_search"].append(row["em_search"])
            values[f"{kind}/em_control"].append(row["em_control"])
    return {k: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)), "min": min(v), "max": max(v)} for k, v in values.items()}


def print_spread(runs: list[dict[str, Any]]) -> None:
    stats = spread(runs)
    print(f"## {len(runs)} runs, last eval: mean ± sd (min-max)\n")
    print("| question | EM with search | EM search disabled |\n|---|---|---|")
    for kind in ["all"] + list(runs[0]["by_type"]):
        cells = [stats[f"{kind}/{metric}"] for metric in ("em_search", "em_control")]
        print(f"| {kind} | " + " | ".join(f"{c['mean']:.3f} ± {c['sd']:.3f} ({c['min']:.3f}-{c['max']:.3f})" for c in cells) + " |")
    print()


def plot(runs: list[dict[str, Any]], path: Path, *, questions: int) -> None:
    """Training rollouts over steps (left); the last evaluation per question type, a bar per run
    with search and a black tick per run with search disabled (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    kinds = ["all"] + list(runs[0]["by_type"])
    width = 0.8 / len(runs)
    for i, r in enumerate(runs):
        name = Path(r["run"]).name if len(runs) > 1 else ""
        steps = [t["step"] for t in r["training"]]
        left.plot(steps, [t["rollout/info/searches"] for t in r["training"]], label=f"searches per episode {name}".strip())
        left.plot(steps, [t["rollout/info/correct"] for t in r["training"]], label=f"exact match (training) {name}".strip())
        last = r["evals"][-1]
        with_search = [last["em_search"]] + [row["em_search"] for row in r["by_type"].values()]
        control = [last["em_control"]] + [row["em_control"] for row in r["by_type"].values()]
        xs = np.arange(len(kinds)) - 0.4 + width * (i + 0.5)
        right.bar(xs, with_search, width, label=f"with search {name} (step {r['step']})".strip())
        right.scatter(xs, control, marker="_", color="black", s=120, label="search disabled" if i == 0 else None, zorder=3)
    left.set_xlabel("step")
    left.set_title("training rollouts")
    left.legend(fontsize="small")
    right.set_xticks(np.arange(len(kinds)), [k.replace(" ", "\n", 1) for k in kinds], fontsize="small")
    right.set_ylim(0, 1.3)
    right.set_ylabel("exact match")
    right.set_title(f"{questions} held-out questions, greedy, last evaluation")
    right.legend(fontsize="small", loc="upper center", ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
