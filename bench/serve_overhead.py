"""What serving costs: tokens/s through ``agentrl serve`` (over HTTP, with and without
sglang-router in front) against the same embedded engine in this process, on the same work.

Workload: the 32 chat prompts of ``bench/embedded_generate.py`` x ``--copies``, ``--new-tokens``
each with ``ignore_eos`` (so every contender generates exactly the same number of tokens), sampled
at temperature 1.0 with per-request seeds, all requests at once. Contenders, each after a warm-up
round, median of ``--runs``:

* ``in_process``: :class:`~agentrl.policies.embedded.EmbeddedEngine` here, ``asyncio.gather``
  of ``generate`` calls (the loop's default backend);
* ``serve``: one ``agentrl serve`` worker (a subprocess with the same model, dtype and batch
  size), through :class:`~agentrl.policies.sglang.SGLangPolicy` straight at the worker;
* ``serve_router``: the same worker behind sglang-router, ``SGLangPolicy`` at the router (how
  the loop runs with ``--rollout-num-engines``).

Overhead = 1 - tokens/s of a contender / tokens/s in process.

    python bench/serve_overhead.py [--copies 2] [--new-tokens 64] [--runs 3] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from embedded_generate import MODEL, prompts

from agentrl.engines.fleet import EngineFleet
from agentrl.engines.launch import EngineSpec
from agentrl.engines.router import RouterSpec
from agentrl.policies import Policy, SamplingParams
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.policies.sglang import SGLangPolicy


async def tokens_per_s(policy: Policy, work: Sequence[list[int]], new_tokens: int, seed: int) -> float:
    """Generate for every prompt at once; generated tokens per second of wall time."""
    started = time.perf_counter()
    generations = await asyncio.gather(*(
        policy.generate(ids, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True, seed=seed + i), rid=f"bench-{seed}-{i}:0")
        for i, ids in enumerate(work)
    ))
    elapsed = time.perf_counter() - started
    produced = sum(len(g.token_ids) for g in generations)
    if produced != new_tokens * len(work):
        raise RuntimeError(f"expected {new_tokens * len(work)} tokens, got {produced}: the contenders would not do the same work")
    return produced / elapsed


async def measure(policy: Policy, work: Sequence[list[int]], args: argparse.Namespace) -> list[float]:
    await tokens_per_s(policy, work[:8], 8, seed=0)  # warm-up
    return [await tokens_per_s(policy, work, args.new_tokens, seed=100 * (run + 1)) for run in range(args.runs)]


async def main(args: argparse.Namespace) -> dict[str, object]:
    batch = 32 * args.copies
    engine = EmbeddedEngine.from_pretrained(MODEL, dtype=args.dtype, max_batch_size=batch)
    work = prompts(engine.tokenizer) * args.copies
    results: dict[str, list[float]] = {}
    async with engine:
        results["in_process"] = await measure(engine, work, args)
    with tempfile.TemporaryDirectory() as run_dir:
        spec = EngineSpec(MODEL, server_args={"dtype": args.dtype, "max_running_requests": batch})
        async with EngineFleet([spec], run_dir, router=RouterSpec({"policy": "round_robin"})) as fleet:
            async with SGLangPolicy(fleet.urls, max_concurrency=batch) as direct:
                results["serve"] = await measure(direct, work, args)
            async with SGLangPolicy(fleet.router_url, max_concurrency=batch) as routed:
                results["serve_router"] = await measure(routed, work, args)
    median = {name: statistics.median(runs) for name, runs in results.items()}
    for name, runs in results.items():
        print(f"{name:14s} {median[name]:8.1f} tokens/s  (runs: {', '.join(f'{r:.1f}' for r in runs)})")
    return {
        "bench": "serve_overhead", "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "model": MODEL, "dtype": args.dtype, "requests": batch, "new_tokens": args.new_tokens, "runs": args.runs,
        **{f"{name}_tokens_per_s": round(v, 1) for name, v in median.items()},
        "serve_overhead": round(1 - median["serve"] / median["in_process"], 3),
        "serve_router_overhead": round(1 - median["serve_router"] / median["in_process"], 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="copies of the 32 prompts (requests = 32 x copies)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
