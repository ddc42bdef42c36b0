"""Rollout runner overhead per env step, from 10 to 10,000 concurrent episodes.

Workload: 4-turn episodes of a tag env (three ``<search>`` turns answered with an
``<information>`` observation, then an ``<answer>``), SmolLM2's real tokenizer and chat template,
and a policy that returns pre-tokenized replies instantly (so only the runner is measured).

Baseline: the same episodes driven by calling ``env.reset``/``env.step`` directly in a loop.
Runner cost per step = (runner wall time - baseline wall time) / env steps. Goal: flat as
concurrency grows.

    python bench/rollout_overhead.py [--levels 10 100 1000 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import time
from typing import Any

from transformers import AutoTokenizer

from agentrl.envs import Action, Env, Message, StepResult, Task
from agentrl.models.resolve import resolve_model
from agentrl.policies import Generation, Policy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner

TURNS = 4
REPLIES = [f"Let me look that up. <search>query number {k}</search>" for k in range(TURNS - 1)] + ["<answer>Paris</answer>"]


class FourTurnEnv(Env):
    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self.turn = 0
        return [{"role": "user", "content": f"Question {task.index}: what is the capital of France? Search first."}], {}

    async def step(self, action: Action) -> StepResult:
        self.turn += 1
        if re.search(r"<answer>(.*?)</answer>", action.text):
            return StepResult([], 1.0, True, False, {})
        query = re.search(r"<search>(.*?)</search>", action.text)
        content = f"<information>Result for {query.group(1) if query else '?'}: Paris is the capital of France.</information>"
        return StepResult([{"role": "user", "content": content}], 0.0, False, False, {})


class InstantPolicy(Policy):
    """Pre-tokenized replies, returned without any model work."""

    def __init__(self, tokenizer: Any) -> None:
        self.replies = [tokenizer.encode(r, add_special_tokens=False) + [tokenizer.eos_token_id] for r in REPLIES]

    async def generate(self, input_ids, sampling, *, rid=None) -> Generation:
        ids = self.replies[int(rid.rsplit(":", 1)[1])]
        return Generation(ids, [-0.5] * len(ids), "stop")


async def direct_loop(tasks: list[Task]) -> tuple[float, int]:
    actions = [Action(r) for r in REPLIES]
    steps = 0
    started = time.perf_counter()
    for task in tasks:
        env = FourTurnEnv()
        await env.reset(task)
        for action in actions:
            steps += 1
            if (await env.step(action)).terminated:
                break
        await env.close()
    return time.perf_counter() - started, steps


async def with_runner(tokenizer: Any, tasks: list[Task], concurrency: int) -> tuple[float, int]:
    runner = RolloutRunner(InstantPolicy(tokenizer), ChatRenderer(tokenizer), FourTurnEnv, RolloutConfig(concurrency=concurrency, max_turns=TURNS))
    started = time.perf_counter()
    trajectories = await runner.run(tasks, progress=False)
    elapsed = time.perf_counter() - started
    assert all(t.reward == 1.0 and t.metrics["turns"] == TURNS for t in trajectories)
    return elapsed, sum(int(t.metrics["turns"]) for t in trajectories)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description="rollout runner overhead per env step")
    parser.add_argument("--levels", type=int, nargs="+", default=[10, 100, 1000, 10000])
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    asyncio.run(with_runner(tokenizer, [Task("warm-up", index=i) for i in range(10)], 10))
    rows = []
    for level in args.levels:
        tasks = [Task(f"q{i}", index=i) for i in range(level)]
        base_s, base_steps = asyncio.run(direct_loop(tasks))
        run_s, run_steps = asyncio.run(with_runner(tokenizer, tasks, level))
        assert base_steps == run_steps
        row = {
            "concurrent_episodes": level,
            "env_steps": run_steps,
            "direct_us_per_step": round(base_s / base_steps * 1e6, 1),
            "runner_us_per_step": round(run_s / run_steps * 1e6, 1),
            "overhead_us_per_step": round((run_s - base_s) / run_steps * 1e6, 1),
        }
        rows.append(row)
        print(f"{level:>6} episodes  direct {row['direct_us_per_step']:>8.1f} us/step  runner {row['runner_us_per_step']:>8.1f} us/step  overhead {row['overhead_us_per_step']:>8.1f} us/step", flush=True)
    growth = rows[-1]["overhead_us_per_step"] / rows[0]["overhead_us_per_step"]
    print(json.dumps({
        "bench": "rollout_overhead",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "turns_per_episode": TURNS,
        "rows": rows,
        "overhead_growth_largest_vs_smallest": round(growth, 3),
    }))


if __name__ == "__main__":
    main()
