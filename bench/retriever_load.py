"""The Search-R1 retrieval server under load: N concurrent queries from the env's own client.

Starts ``python -m envs_contrib.search_r1.server`` on the example corpus (built by
``examples/search_r1/make_data.py`` when missing) as a separate process, then fires ``--queries``
searches at once, each from its own :class:`RetrieverClient` (as ``--queries`` concurrent
episodes would), and records per-query latency, errors and throughput.

Baseline: the same queries answered by the same BM25 index in this process, one call per query
(no HTTP, no concurrency): what the server adds is the difference.

    python bench/retriever_load.py [--queries 1000] [--topk 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from agentrl.engines.health import NotHealthy, start_healthy
from agentrl.engines.process import ManagedProcess, free_port
from envs_contrib.search_r1.retriever import RetrieverClient
from envs_contrib.search_r1.server import BM25Index, load_corpus

DATA = Path("examples/search_r1/data")


async def fire(url: str, queries: list[str], topk: int) -> tuple[list[float], int, float]:
    """Every query at once, each from its own client. Returns (latencies in s, errors, wall s)."""
    clients = [RetrieverClient(url, topk=topk, timeout_s=60.0, retries=0) for _ in queries]

    async def one(client: RetrieverClient, query: str) -> float | None:
        started = time.perf_counter()
        try:
            passages = await client.search(query)
        except Exception as e:
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return None
        return time.perf_counter() - started if passages else None

    started = time.perf_counter()
    results = await asyncio.gather(*(one(c, q) for c, q in zip(clients, queries)))
    wall = time.perf_counter() - started
    await asyncio.gather(*(c.aclose() for c in clients))
    latencies = [r for r in results if r is not None]
    return latencies, len(results) - len(latencies), wall


async def against_server(corpus: Path, queries: list[str], topk: int, log_dir: Path) -> tuple[list[float], int, float]:
    """Start the server on ``corpus``, wait for ``/health``, warm it up, then :func:`fire`."""
    port = free_port()
    server = ManagedProcess("retrieval-server", [sys.executable, "-m", "envs_contrib.search_r1.server", "--corpus", str(corpus), "--port", str(port)],
                            log_dir / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await start_healthy(server, session, url, timeout_s=120.0, path="/health")
    except NotHealthy as e:
        raise SystemExit(f"the retrieval server {e}\n{server.describe()}") from None
    try:
        await fire(f"{url}/retrieve", queries[:20], topk)  # warm-up
        return await fire(f"{url}/retrieve", queries, topk)
    finally:
        await server.stop(30.0)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 10) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000, help="concurrent queries (one client each)")
    parser.add_argument("--topk", type=int, default=3)
    args = parser.parse_args()
    if not (DATA / "corpus.jsonl").is_file():
        subprocess.run([sys.executable, "examples/search_r1/make_data.py", "--out", str(DATA)], check=True)
    questions = [json.loads(line)["question"] for line in (DATA / "train.jsonl").read_text().splitlines()]
    queries = [questions[i % len(questions)] for i in range(args.queries)]

    index = BM25Index(load_corpus(DATA / "corpus.jsonl"))
    started = time.perf_counter()
    for q in queries:
        index.search([q], args.topk)
    in_process_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as log_dir:
        latencies, errors, wall = asyncio.run(against_server(DATA / "corpus.jsonl", queries, args.topk, Path(log_dir)))
    ms = [x * 1e3 for x in latencies]
    print(json.dumps({
        "bench": "retriever_load", "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "queries": args.queries, "concurrent": args.queries, "topk": args.topk, "errors": errors,
        "p50_ms": round(percentile(ms, 50), 1), "p90_ms": round(percentile(ms, 90), 1), "p99_ms": round(percentile(ms, 99), 1),
        "max_ms": round(max(ms), 1), "queries_per_s": round(len(latencies) / wall, 1),
        "in_process_queries_per_s": round(args.queries / in_process_s, 1),
    }))


if __name__ == "__main__":
    main()
