"""The OpenAI endpoint under load: ``--sessions`` concurrent recorded sessions, each a 3-turn
tool-calling agent on the real ``openai`` SDK, against a scripted policy (no model: what is timed
is the serving and recording, not generation).

Isolation: every session's user message names it, and the scripted policy's replies carry the name
of the session whose context it was given; afterwards each session's recorded tokens are decoded
and must hold its own name and no other session's (and its sampled ids must be exactly its
replies' ids).

Overhead: the same number of requests on the same policy through SGLang's native API
(``POST /generate`` with the context's ``input_ids``, :class:`~agentrl.serving.SGLangServer`) at
the same concurrency, in the same run; per-request latency (mean, p50, p95) of each path and their
difference, and the wall time per request of each path (both paths' clients run in this process, so
latency includes queueing behind every other session's client work). The OpenAI path also renders the chat template, checks the prefix property and
encodes each request's new messages, which the SGLang path's client did beforehand.

    python bench/openai_endpoint.py [--sessions 256] [--turns 3]

Prints one JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import time
from typing import Any

import aiohttp
import openai
from transformers import AutoTokenizer

from agentrl.models.resolve import resolve_model
from agentrl.policies import ScriptedPolicy
from agentrl.rollout import ChatRenderer
from agentrl.serving import SGLangServer
from agentrl.serving.openai_api import OpenAIAPI, OpenAIServer, policy_generate

NAME = re.compile(r"session-(\d+)")
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a key up.",
                                            "parameters": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}]


def reply(turn: int, context: str, turns: int) -> str:
    """The scripted turn: a tool call naming the session in the context, then the answer."""
    owner = NAME.findall(context)[0]
    if turn < turns - 1:
        return f'<tool_call>{{"name": "lookup", "arguments": {{"key": "session-{owner}-turn-{turn}"}}}}</tool_call>'
    return f"done for session-{owner}"


async def agent(client: openai.AsyncOpenAI, k: int, turns: int, latencies: list[float]) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"I am session-{k}. Look things up."}]
    for _ in range(turns):
        started = time.perf_counter()
        message = (await client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS)).choices[0].message
        latencies.append(time.perf_counter() - started)
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": f"value of {json.loads(call.function.arguments)['key']}"})


async def openai_path(tokenizer: Any, sessions: int, turns: int) -> tuple[list[float], dict[str, Any]]:
    """Every session's agent at once; returns request latencies and the isolation check."""
    policy = ScriptedPolicy(tokenizer, lambda turn, context: reply(turn, context, turns))
    api = OpenAIAPI(policy_generate(policy), ChatRenderer(tokenizer), model_name="scripted")
    latencies: list[float] = []
    async with OpenAIServer(api) as server:
        opened = [api.open_session(f"s{k}") for k in range(sessions)]
        clients = [openai.AsyncOpenAI(base_url=server.base_url(s), api_key="unused", max_retries=0, timeout=600) for s in opened]
        started = time.perf_counter()
        await asyncio.gather(*(agent(c, k, turns, latencies) for k, c in enumerate(clients)))
        wall = time.perf_counter() - started
        await asyncio.gather(*(c.close() for c in clients))
    return latencies, {**isolation(tokenizer, opened, turns), "openai_wall_s": round(wall, 3)}


def isolation(tokenizer: Any, sessions: list[Any], turns: int) -> dict[str, Any]:
    """Each session's tokens name only itself, and its sampled ids are its replies' ids."""
    leaks, wrong_ids = 0, 0
    for k, session in enumerate(sessions):
        [segment] = session.conversation.segments
        names = set(NAME.findall(tokenizer.decode(segment.token_ids)))
        leaks += names != {str(k)}
        sampled = [t for t, m in zip(segment.response_ids, segment.loss_mask) if m]
        expected = [t for turn in range(turns) for t in tokenizer.encode(reply(turn, f"session-{k}", turns), add_special_tokens=False) + [tokenizer.eos_token_id]]
        wrong_ids += sampled != expected
    return {"sessions_leaking": leaks, "sessions_with_wrong_ids": wrong_ids, "sessions_checked": len(sessions)}


async def sglang_path(tokenizer: Any, sessions: int, turns: int) -> tuple[list[float], float]:
    """The same number of requests as ``/generate`` calls with pre-tokenized contexts."""
    policy = ScriptedPolicy(tokenizer, lambda turn, context: reply(turn, context, turns))
    latencies: list[float] = []

    async def one(http: aiohttp.ClientSession, k: int) -> None:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": f"I am session-{k}. Look things up."}], add_generation_prompt=True)["input_ids"]
        for turn in range(turns):
            started = time.perf_counter()
            async with http.post("/generate", json={"input_ids": ids, "rid": f"s{k}:{turn}", "sampling_params": {"max_new_tokens": 128}}) as r:
                out = await r.json()
            latencies.append(time.perf_counter() - started)
            ids = ids + out["output_ids"]

    async with SGLangServer(policy, tokenizer) as server, aiohttp.ClientSession(server.url, connector=aiohttp.TCPConnector(limit=0)) as http:
        started = time.perf_counter()
        await asyncio.gather(*(one(http, k) for k in range(sessions)))
        wall = time.perf_counter() - started
    return latencies, wall


def stats(latencies: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in latencies)
    return {"mean_ms": round(statistics.fmean(ms), 2), "p50_ms": round(ms[len(ms) // 2], 2), "p95_ms": round(ms[int(len(ms) * 0.95)], 2)}


async def main(sessions: int, turns: int) -> dict[str, Any]:
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    await openai_path(tokenizer, 4, turns)  # warm-up (imports, first renders)
    openai_latencies, checks = await openai_path(tokenizer, sessions, turns)
    sglang_latencies, sglang_wall = await sglang_path(tokenizer, sessions, turns)
    o, s = stats(openai_latencies), stats(sglang_latencies)
    requests = len(openai_latencies)
    return {"bench": "openai_endpoint", "sessions": sessions, "turns": turns, "requests": requests, **checks, "sglang_wall_s": round(sglang_wall, 3),
            "openai": o, "sglang": s, "overhead_mean_ms": round(o["mean_ms"] - s["mean_ms"], 2),
            "wall_ms_per_request": {"openai": round(1000 * checks["openai_wall_s"] / requests, 2), "sglang": round(1000 * sglang_wall / requests, 2)},
            "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "openai": openai.__version__, "loadavg_at_start": os.getloadavg()[0]}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--turns", type=int, default=3)
    args = parser.parse_args()
    result = asyncio.run(main(args.sessions, args.turns))
    print(json.dumps(result))
    if result["sessions_leaking"] or result["sessions_with_wrong_ids"]:
        raise SystemExit("isolation failed: a session's recording holds another's tokens or ids it did not sample")
