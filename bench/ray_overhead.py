"""What the Ray launcher costs: the same small CPU training run through the local launcher and the
Ray launcher, step time against step time.

Both runs: SmolLM2-135M-Instruct (the embedded default) on the math env, fp32, ``--deterministic``,
one trainer and one ``agentrl serve`` engine behind sglang-router (local: ``--rollout-num-engines
1``; Ray: 1 trainer rank and ``--rollout-num-gpus 1`` as CPU bundles, on a local Ray cluster the
launcher starts), ``--weight-sync distributed`` (gloo). Same tasks, seeds and engine, so both play
the same episodes; the difference is where the trainer and the rollout manager run and how
trajectories and weights travel (actor calls, Ray's object store, a cross-process weight push).

The measure is ``perf/step_time_s`` over the steps after the first (which warms up both), and its
parts (rollout, train, weight sync): median and minimum over the steps of ``--repeats`` runs of
each launcher, run alternately so that load from other work on the machine falls on both; the
minimum is the figure least disturbed by it.

    python bench/ray_overhead.py [--steps 6] [--prompts 4] [--samples 4] [--max-tokens 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARTS = ("perf/step_time_s", "perf/rollout_time_s", "perf/train_time_s", "perf/weight_sync_time_s")


def make_tasks(path: Path, n: int) -> None:
    path.write_text("".join(json.dumps({"input": f"What is {i} + {2 * i + 3}? Put the answer in \\boxed{{}}.", "label": str(3 * i + 3)}) + "\n"
                            for i in range(n)))


def run(launcher: str, tasks: Path, out: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    """One training run; the step-time parts of each step after the first."""
    engines = ["--rollout-num-engines", "1"] if launcher == "local" else ["--rollout-num-gpus", "1", "--actor-num-cpus-per-rank", "2"]
    cmd = [sys.executable, "-m", "agentrl.train", "--launcher", launcher, *engines, "--prompt-data", str(tasks), "--output-dir", str(out),
           "--num-rollout", str(args.steps), "--rollout-batch-size", str(args.prompts), "--n-samples-per-prompt", str(args.samples),
           "--rollout-max-response-len", str(args.max_tokens), "--no-bf16", "--deterministic", "--lr", "1e-6"]
    # Ray starts its workers at nice 15 (RAY_worker_niceness): on a machine shared with other work
    # that alone starved the Ray run (33x slower); compare launchers, not scheduling priorities.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    print(f"{launcher}: {args.steps} steps ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the {launcher} run failed:\n{done.stderr[-3000:]}")
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "perf/step_time_s" in r][1:]
    print(f"{launcher}: done in {time.perf_counter() - started:.0f} s, step times " + " ".join(f"{r[PARTS[0]]:.2f}" for r in rows),
          file=sys.stderr, flush=True)
    return [{part: r[part] for part in PARTS} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each launcher, alternated (local, ray, local, ray, ...)")
    args = parser.parse_args()
    steps: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks.jsonl"
        make_tasks(tasks, 64)
        for repeat in range(args.repeats):
            for launcher in steps:
                steps[launcher] += run(launcher, tasks, Path(tmp) / f"{launcher}{repeat}", args)
    results = {launcher: {f"{stat}_{part.split('/')[-1]}": round(fn(r[part] for r in rows), 4) for part in PARTS
                          for stat, fn in (("median", statistics.median), ("min", min))} for launcher, rows in steps.items()}
    for launcher, parts in results.items():
        print(f"{launcher:>6}: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    ratio = {stat: round(results["ray"][f"{stat}_step_time_s"] / results["local"][f"{stat}_step_time_s"], 3) for stat in ("median", "min")}
    print(json.dumps({"bench": "ray_overhead", "machine": f"{platform.machine()} {os.cpu_count()} cores", "load_avg_1m": round(os.getloadavg()[0], 2),
                      "steps": args.steps, "repeats": args.repeats, "prompts": args.prompts, "samples": args.samples, "max_tokens": args.max_tokens,
                      "local": results["local"], "ray": results["ray"], "step_time_ratio": ratio, "goal": 1.15}))


if __name__ == "__main__":
    main()
