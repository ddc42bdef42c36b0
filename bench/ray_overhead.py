"""What the Ray launcher costs: the same small CPU training run through the local launcher and the
Ray launcher, step time against step time.

Both runs: SmolLM2-135M-Instruct (the embedded default) on the math env, fp32, ``--deterministic``,
one trainer and one ``agentrl serve`` engine behind sglang-router (local: ``--rollout-num-engines
1``; Ray: 1 trainer rank and ``--rollout-num-gpus 1`` as CPU bundles, on a local Ray cluster the
launcher starts), ``--weight-sync distributed`` (gloo). Same tasks, seeds and engine, so both play
the same episodes; the difference is where the trainer and the rollout manager run and how
trajectories and weights travel (actor calls, Ray's object store, a cross-process weight push).

The measure is the median ``perf/step_time_s`` over the steps after the first (which warms up
both), and its parts (rollout, train, weight sync).

    python bench/ray_overhead.py [--steps 6] [--prompts 4] [--samples 4] [--max-tokens 48]
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


def run(launcher: str, tasks: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """One training run; the median of each step-time part over the steps after the first."""
    engines = ["--rollout-num-engines", "1"] if launcher == "local" else ["--rollout-num-gpus", "1", "--actor-num-cpus-per-rank", "2"]
    cmd = [sys.executable, "-m", "agentrl.train", "--launcher", launcher, *engines, "--prompt-data", str(tasks), "--output-dir", str(out),
           "--num-rollout", str(args.steps), "--rollout-batch-size", str(args.prompts), "--n-samples-per-prompt", str(args.samples),
           "--rollout-max-response-len", str(args.max_tokens), "--no-bf16", "--deterministic", "--lr", "1e-6"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the {launcher} run failed:\n{done.stderr[-3000:]}")
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "perf/step_time_s" in r][1:]
    return {part: statistics.median(r[part] for r in rows) for part in PARTS} | {"wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = Path(tmp) / "tasks.jsonl"
        make_tasks(tasks, 64)
        results = {launcher: run(launcher, tasks, Path(tmp) / launcher, args) for launcher in ("local", "ray")}
    for launcher, parts in results.items():
        print(f"{launcher:>6}: " + ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in parts.items()))
    ratio = results["ray"]["perf/step_time_s"] / results["local"]["perf/step_time_s"]
    print(json.dumps({"bench": "ray_overhead", "machine": f"{platform.machine()} {os.cpu_count()} cores", "steps": args.steps,
                      "prompts": args.prompts, "samples": args.samples, "max_tokens": args.max_tokens,
                      "local": results["local"], "ray": results["ray"], "step_time_ratio": round(ratio, 3), "goal": 1.15}))


if __name__ == "__main__":
    main()
