"""SGLangPolicy against real HTTP servers: SGLang's protocol as read from its source (the
fixtures of scripts/sglang_protocol_fixtures.py), our SGLangServer over the embedded SmolLM2
engine, a real killed worker process, retries, aborts, affinity and the real sglang-router."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agentrl.errors import PolicyError
from agentrl.policies import SGLangPolicy
from agentrl.policies.base import SamplingParams
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.policies.sglang import ROUTING_KEY_HEADER, episode_key
from agentrl.serving import SGLangServer

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "sglang"
PROTOCOL = json.loads((FIXTURES / "protocol.json").read_text())
FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}


def response(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "responses" / f"{name}.json").read_text())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Worker:
    """A real aiohttp server speaking SGLang's /generate with ``reply`` (a fixture name, or a
    handler); records each /generate body and routing header, and /abort_request bodies."""

    def __init__(self, reply: str | Handler = "length") -> None:
        self.reply, self.bodies, self.keys, self.aborts = reply, [], [], []
        self.in_flight = self.max_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> Worker:
        app = web.Application()
        app.add_routes([web.post("/generate", self._generate), web.post("/abort_request", self._abort)])
        app.add_routes([web.get(path, self._info) for path in ("/health", "/health_generate", "/get_model_info", "/get_server_info")])
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.keys.append(request.headers.get(ROUTING_KEY_HEADER))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if callable(self.reply):
                return await self.reply(request)
            return web.json_response(response(self.reply) | {"meta_info": response(self.reply)["meta_info"] | {"id": body["rid"]}})
        finally:
            self.in_flight -= 1

    async def _info(self, _: web.Request) -> web.Response:  # what sglang-router asks a worker
        return web.json_response({"model_path": "m", "dp_size": 1})

    async def _abort(self, request: web.Request) -> web.Response:
        self.aborts.append(await request.json())
        return web.Response(text="")


@contextlib.asynccontextmanager
async def workers(*replies: str | Handler) -> AsyncIterator[list[Worker]]:
    started = [await Worker(r).start() for r in replies]
    try:
        yield started
    finally:
        for w in started:
            await w.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- (a) request bodies use SGLang's names and JSON types ------------------------------------

CONTRACT_TYPES: dict[str, Callable[[Any], bool]] = {
    "_expect_int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "_expect_float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "_expect_bool": lambda v: isinstance(v, bool),
    "decode_StringOrList": lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "decode_Int64List": lambda v: isinstance(v, list) and all(CONTRACT_TYPES["_expect_int"](t) for t in v),
    "decode_TokenIdsOrList": lambda v: CONTRACT_TYPES["decode_Int64List"](v),
    "decode_BoolOrList": lambda v: isinstance(v, bool),
    "decode_SamplingParamsOrList": lambda v: isinstance(v, dict),
}


def check_against_contract(body: dict[str, Any], names: list[str], contract: dict[str, str]) -> None:
    assert set(body) <= set(names), f"not SGLang field names: {set(body) - set(names)}"
    for key, value in body.items():
        decoder = contract.get(key)
        assert decoder is not None, f"{key!r} is not in SGLang's JSON contract"
        assert decoder in CONTRACT_TYPES, f"add a type check for SGLang decoder {decoder} ({key})"
        assert CONTRACT_TYPES[decoder](value), f"{key}={value!r} fails SGLang's {decoder}"


@pytest.mark.parametrize("sampling", [
    SamplingParams(),
    SamplingParams(max_new_tokens=7, temperature=0, top_k=1),
    SamplingParams(temperature=0.7, top_p=0.9, top_k=50, stop=("</answer>", "\n\n"), stop_token_ids=(2, 7), ignore_eos=True, seed=123),
])
async def test_request_bodies_use_only_sglang_names_and_types(sampling):
    async with workers("length") as [worker], SGLangPolicy(worker.url) as policy:
        await policy.generate([1, 2, 3], sampling, rid="4-1-abc:2")
    [body] = worker.bodies
    check_against_contract(body, PROTOCOL["generate_req_input_fields"], PROTOCOL["contract"]["generate_request"])
    check_against_contract(body["sampling_params"], PROTOCOL["sampling_params"], PROTOCOL["contract"]["sampling_params"])
    params = body["sampling_params"]
    assert body["input_ids"] == [1, 2, 3] and body["return_logprob"] is True and body["rid"] == "4-1-abc:2"
    assert params["no_stop_trim"] is True and params["max_new_tokens"] == sampling.max_new_tokens
    assert params.get("stop", []) == list(sampling.stop) and params.get("stop_token_ids", []) == list(sampling.stop_token_ids)
    assert params.get("sampling_seed") == sampling.seed and worker.keys == ["4-1-abc"]


def test_checked_in_responses_are_what_the_script_builds_from_the_protocol():
    spec = importlib.util.spec_from_file_location("fixtures_script", ROOT / "scripts" / "sglang_protocol_fixtures.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    built = script.responses(PROTOCOL)
    assert {f"{stem}.json" for stem, *_ in built} == {p.name for p in (FIXTURES / "responses").glob("*.json")}
    for stem, _, body, _ in built:
        assert response(stem) == body, f"{stem}.json differs from what scripts/sglang_protocol_fixtures.py builds"
    assert PROTOCOL["output_token_logprobs_entry"] == ["logprob", "token_id", None]
    assert {"rid", "input_ids", "sampling_params", "return_logprob"} <= set(PROTOCOL["generate_req_input_fields"])


# --- (b) each SGLang-shaped response parses into the right Generation ---------------------------

@pytest.mark.parametrize(("name", "finish", "matched", "version"), [
    ("stop_token_eos", "stop", 2, 3),
    ("stop_string", "stop", "</answer>", 3),
    ("length", "length", None, 3),
    ("abort_running", "abort", None, 3),
    ("abort_waiting", "abort", None, 3),
    ("weight_update_mid_request", "stop", 2, 3),
])
async def test_fixture_responses_parse_into_generations(name, finish, matched, version):
    body = response(name)
    async with workers(name) as [worker], SGLangPolicy(worker.url) as policy:
        generation = await policy.generate([1, 2], SamplingParams(stop=("</answer>",)), rid="7-0-7f3a9c21:1")
        newest = policy.weight_version
    entries = body["meta_info"]["output_token_logprobs"]
    assert generation.token_ids == body["output_ids"] == [e[1] for e in entries]
    assert generation.logprobs == [e[0] for e in entries]
    assert (generation.finish_reason, generation.matched_stop, generation.weight_version) == (finish, matched, version)
    assert newest == int(body["meta_info"]["weight_version"])
    if name == "weight_update_mid_request":  # tokens from versions 3 and 4: the oldest counts, the newest is kept
        assert generation.meta["weight_version_newest"] == 4.0 and newest == 4
    if finish != "abort":
        assert generation.meta["cached_tokens"] == body["meta_info"]["cached_tokens"]


def mutated(name: str, **meta: Any) -> Handler:
    async def reply(request: web.Request) -> web.Response:
        body = response(name)
        body["meta_info"] = {k: v for k, v in (body["meta_info"] | meta).items() if v != "<drop>"}
        return web.json_response(body)
    return reply


@pytest.mark.parametrize(("reply", "stop", "error"), [
    ("stop_nan", (), "outside the vocabulary"),
    (mutated("length", finish_reason=None), (), "unfinished generation"),
    (mutated("length", weight_version="v1", weight_versions="<drop>"), (), "weight_version 'v1'"),
    (mutated("length", output_token_logprobs=[[-0.5, 9, None]] * 8), (), "disagree"),
    (mutated("length", output_token_logprobs="<drop>"), (), "no output_token_logprobs"),
])
async def test_answers_that_break_the_protocol_raise_at_once(reply, stop, error):
    async with workers(reply) as [worker], SGLangPolicy(worker.url, **FAST) as policy:
        with pytest.raises(PolicyError, match=error):
            await policy.generate([1, 2], SamplingParams(stop=stop))
    assert len(worker.bodies) == 1


async def test_a_matched_stop_string_the_caller_asked_for_is_a_stop_and_older_servers_need_no_version():
    async with workers("stop_nan", mutated("length", weight_version="<drop>", weight_versions="<drop>")) as [nan, old]:
        async with SGLangPolicy(nan.url) as policy:
            generation = await policy.generate([1], SamplingParams(stop=("NaN happened",)))
        assert (generation.finish_reason, generation.matched_stop) == ("stop", "NaN happened")
        async with SGLangPolicy(old.url) as policy:
            generation = await policy.generate([1], SamplingParams())
            assert generation.weight_version == 0 and policy.weight_version == 0 and len(generation.token_ids) == 8


# --- (c) end to end against SGLangServer over the embedded engine -------------------------------

@pytest.fixture
async def served(smollm2_fp32, tokenizer, smollm2_dir):
    async with EmbeddedEngine(smollm2_fp32, tokenizer, seed=0) as engine, SGLangServer(engine, tokenizer, model_path=str(smollm2_dir)) as server:
        yield engine, server


def chat(tokenizer, question: str) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)["input_ids"]


async def test_tokens_and_logprobs_equal_the_engines_in_process(served, tokenizer):
    engine, server = served
    cases = [
        (chat(tokenizer, "Name a color."), SamplingParams(max_new_tokens=8, temperature=0.8, seed=7)),
        (chat(tokenizer, "Count from 1 to 10, separated by commas."), SamplingParams(max_new_tokens=24, temperature=0, stop=("4",))),
    ]
    async with SGLangPolicy(server.url) as policy:
        remote = await asyncio.gather(*(policy.generate(ids, s, rid=f"{i}-0-e:0") for i, (ids, s) in enumerate(cases)))
    for (ids, sampling), got in zip(cases, remote):
        want = await engine.generate(ids, sampling)
        assert got.token_ids == want.token_ids and len(got.token_ids) > 0
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-5)
        assert (got.finish_reason, got.matched_stop, got.weight_version) == (want.finish_reason, want.matched_stop, want.weight_version)
    assert remote[1].matched_stop == "4" and tokenizer.decode(remote[1].token_ids).endswith("4")  # stop string kept


# --- (d) retries ---------------------------------------------------------------------------------

def own_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "agentrl.policies.sglang" and r.levelno == logging.WARNING]


async def test_503s_are_retried_with_fresh_rids_then_succeed(caplog):
    calls = 0

    async def flaky(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        return web.json_response(response("length"))

    async with workers(flaky) as [worker], SGLangPolicy(worker.url, attempts=3, **FAST) as policy:
        with caplog.at_level(logging.WARNING, "agentrl.policies.sglang"):
            generation = await policy.generate([1, 2], SamplingParams(), rid="e:0")
    assert generation.finish_reason == "length" and [b["rid"] for b in worker.bodies] == ["e:0", "e:0~2", "e:0~3"]
    warnings = own_warnings(caplog)
    assert len(warnings) == 2 and "HTTP 503: overloaded" in warnings[0] and "attempt 1/3" in warnings[0] and "attempt 2/3" in warnings[1]


async def test_refused_connections_are_retried_until_the_server_comes_up(caplog):
    port = free_port()
    async with SGLangPolicy(f"http://127.0.0.1:{port}", attempts=8, backoff_s=0.1, max_backoff_s=0.2) as policy:
        with caplog.at_level(logging.WARNING, "agentrl.policies.sglang"):
            pending = asyncio.create_task(policy.generate([1], SamplingParams()))
            while not any("attempt 1/8" in m for m in own_warnings(caplog)):
                await asyncio.sleep(0.01)
            worker = await Worker("stop_token_eos").start(port)
            try:
                generation = await pending
            finally:
                await worker.stop()
    assert generation.finish_reason == "stop" and len(worker.bodies) == 1
    assert "ClientConnectorError" in own_warnings(caplog)[0]


@pytest.mark.parametrize(("name", "reason"), [
    ("error_400_context_length", "is longer than the model's context length (8192 tokens)"),
    ("error_400_contract", "unknown field `temprature`"),
])
async def test_a_400_fails_at_once_with_the_servers_reason(name, reason):
    async def bad(_: web.Request) -> web.Response:
        return web.json_response(response(name), status=400)

    async with workers(bad) as [worker], SGLangPolicy(worker.url, attempts=5, **FAST) as policy:
        with pytest.raises(PolicyError, match="HTTP 400") as raised:
            await policy.generate([1], SamplingParams())
    assert reason in str(raised.value) and len(worker.bodies) == 1


async def test_persistent_5xx_and_bad_json_raise_policy_errors():
    async def down(_: web.Request) -> web.Response:
        return web.Response(status=502, text="bad gateway")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="{not json")

    async with workers(down, garbage) as [w_down, w_garbage]:
        async with SGLangPolicy(w_down.url, attempts=3, **FAST) as policy:
            with pytest.raises(PolicyError, match="failed 3 times, last: HTTP 502: bad gateway"):
                await policy.generate([1], SamplingParams())
        async with SGLangPolicy(w_garbage.url, attempts=3, **FAST) as policy:
            with pytest.raises(PolicyError, match="not JSON"):
                await policy.generate([1], SamplingParams())
    assert (len(w_down.bodies), len(w_garbage.bodies)) == (3, 1)


# --- (e) abort -------------------------------------------------------------------------------

async def test_abort_by_rid_ends_a_long_generation_even_with_every_slot_taken(served, tokenizer):
    _, server = served
    async with SGLangPolicy(server.url, max_concurrency=1) as policy:
        pending = asyncio.create_task(policy.generate(chat(tokenizer, "Tell me a story."), SamplingParams(max_new_tokens=2000, ignore_eos=True), rid="9-0-x:0"))
        await asyncio.sleep(1.0)
        assert await policy.abort("9-0-x:0") is True
        generation = await pending
        assert await policy.abort("9-0-x:0") is False  # no longer in flight
    assert generation.finish_reason == "abort" and 0 < len(generation.token_ids) < 2000
    assert len(generation.logprobs) == len(generation.token_ids)


async def test_a_cancelled_generate_aborts_its_request_at_the_engine():
    started = asyncio.Event()

    async def held(_: web.Request) -> web.Response:
        started.set()
        await asyncio.sleep(10)
        return web.json_response(response("length"))

    async with workers(held) as [worker], SGLangPolicy(worker.url, **FAST) as policy:
        pending = asyncio.create_task(policy.generate([1, 2], SamplingParams(), rid="c:0"))
        await started.wait()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        assert await policy.abort("c:0") is False  # no longer in flight
    assert worker.aborts == [{"rid": "c:0"}]


async def test_our_servers_400_for_a_prompt_longer_than_the_context_is_not_retried(served, caplog):
    engine, server = served
    too_long = [5] * (engine.context_length + 1)
    async with SGLangPolicy(server.url, attempts=5, **FAST) as policy:
        with caplog.at_level(logging.WARNING, "agentrl.policies.sglang"), pytest.raises(PolicyError, match="HTTP 400") as raised:
            await policy.generate(too_long, SamplingParams(max_new_tokens=1))
    assert f"the input ({len(too_long)} tokens) is longer than the model's context length ({engine.context_length} tokens)" in str(raised.value)
    assert own_warnings(caplog) == []  # no retry


# --- (f) a killed engine, and affinity ----------------------------------------------------------

SERVE_ONE = """
import asyncio
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.serving import SGLangServer

async def main():
    async with EmbeddedEngine.from_pretrained("smollm2-135m", seed=0) as engine, SGLangServer(engine, engine.tokenizer) as server:
        print(server.url, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.contextmanager
def engine_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A real SGLangServer over the embedded engine in its own process; yields (process, url)."""
    proc = subprocess.Popen([sys.executable, "-c", SERVE_ONE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        yield proc, proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


async def test_an_engine_killed_mid_request_means_a_retry_elsewhere_or_a_policy_error(tokenizer):
    long = SamplingParams(max_new_tokens=2000, ignore_eos=True)
    with engine_process() as (proc, killed_url):
        assert killed_url.startswith("http://"), "the engine process did not start"
        async with workers("length") as [spare], SGLangPolicy([killed_url, spare.url], **FAST) as two, \
                SGLangPolicy(killed_url, attempts=3, **FAST) as one:
            rid = next(r for r in (f"{i}-0-k:0" for i in range(100)) if two.route(r) == killed_url)
            retried = asyncio.create_task(two.generate(chat(tokenizer, "Tell me a story."), long, rid=rid))
            failed = asyncio.create_task(one.generate(chat(tokenizer, "Tell me a joke."), long))
            await asyncio.sleep(1.5)
            assert not retried.done() and not failed.done()
            os.kill(proc.pid, signal.SIGKILL)
            generation = await retried
            with pytest.raises(PolicyError, match="failed 3 times"):
                await failed
            assert two.route(rid) == spare.url  # the dead engine is left out for now
    assert [b["rid"] for b in spare.bodies] == [f"{rid}~2"]  # the complete answer came from the other engine
    assert (generation.finish_reason, len(generation.token_ids)) == ("length", 8)


async def test_each_episode_stays_on_one_engine_while_it_is_healthy():
    async def episode(policy: SGLangPolicy, e: int, turns: int) -> None:
        for turn in range(turns):
            await policy.generate([1, 2, turn], SamplingParams(), rid=f"{e}-0-{e:x}:{turn}")

    def placement(ws: list[Worker]) -> dict[str, set[int]]:
        where: dict[str, set[int]] = {}
        for i, w in enumerate(ws):
            for b in w.bodies:
                where.setdefault(episode_key(b["rid"]), set()).add(i)
        return where

    async with workers("length", "length") as ws, SGLangPolicy([w.url for w in ws], **FAST) as policy:
        await asyncio.gather(*(episode(policy, e, 3) for e in range(20)))
        before = placement(ws)
        assert len(before) == 20 and all(len(engines) == 1 for engines in before.values())
        assert {i for engines in before.values() for i in engines} == {0, 1}  # both engines serve episodes
        await ws[1].stop()
        for w in ws:
            w.bodies.clear()
        await asyncio.gather(*(episode(policy, e, 2) for e in range(20)))
    stayed = {k for k, engines in before.items() if engines == {0}}
    after: dict[str, list[str]] = {}
    for b in ws[0].bodies:
        after.setdefault(episode_key(b["rid"]), []).append(b["rid"])
    assert set(after) == set(before) and all(len(rids) == 2 for rids in after.values())  # every episode now on engine 0 ...
    assert not any("~" in rid for k in stayed for rid in after[k])  # ... and those already there never tried engine 1


# --- (g) concurrency cap ---------------------------------------------------------------------

async def test_the_concurrency_cap_bounds_requests_in_flight():
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        return web.json_response(response("length"))

    async with workers(slow) as [worker], SGLangPolicy(worker.url, max_concurrency=3) as policy:
        await asyncio.gather(*(policy.generate([1], SamplingParams()) for _ in range(12)))
    assert worker.max_in_flight == 3 and len(worker.bodies) == 12


# --- lifecycle and configuration -------------------------------------------------------------

async def test_closed_client_raises_and_close_is_idempotent():
    async with workers("length") as [worker]:
        policy = SGLangPolicy(worker.url)
        await policy.generate([1], SamplingParams())
        await policy.aclose()
        await policy.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await policy.generate([1], SamplingParams())
        with pytest.raises(RuntimeError, match="closed"):
            await policy.abort("x")


async def test_closing_the_client_fails_requests_in_flight():
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.json_response(response("length"))

    async with workers(slow) as [worker]:
        policy = SGLangPolicy(worker.url, **FAST)
        pending = asyncio.create_task(policy.generate([1], SamplingParams()))
        while not worker.bodies:
            await asyncio.sleep(0.01)
        await policy.aclose()
        with pytest.raises(PolicyError, match="closed while the request was in flight"):
            await pending


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"urls": []}, "urls must be"),
    ({"urls": "localhost:30000"}, "urls must be"),
    ({"urls": "http://h:1", "max_concurrency": 0}, "max_concurrency must be >= 1"),
    ({"urls": "http://h:1", "attempts": 0}, "attempts must be >= 1"),
    ({"urls": "http://h:1", "timeout_s": 0}, "timeout_s must be > 0"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGLangPolicy(**kwargs)


# --- behind the real sglang-router ----------------------------------------------------------

@contextlib.asynccontextmanager
async def router(worker_urls: list[str]) -> AsyncIterator[str]:
    """sglang-router (``--policy manual``, new keys to the worker with fewest keys) over the workers."""
    pytest.importorskip("sglang_router", reason="sglang-router is a test dependency (pip install -e '.[test]')")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", str(port), "--policy", "manual",
        "--prometheus-port", str(free_port()), "--assignment-mode", "min_group", "--log-level", "error", "--worker-urls", *worker_urls,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/workers") as r:
                        if r.status == 200 and sum(w["is_healthy"] for w in (await r.json())["workers"]) == len(worker_urls):
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("sglang-router did not register its workers")
        yield url
    finally:
        proc.terminate()
        await proc.wait()


async def test_router_keeps_each_episode_on_one_worker_and_aborts_reach_the_worker():
    release = asyncio.Event()

    async def held(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response(response("abort_running"))

    async with workers("length", "length") as ws, router([w.url for w in ws]) as url, SGLangPolicy(url, **FAST) as policy:
        for turn in range(3):
            await asyncio.gather(*(policy.generate([1, turn], SamplingParams(), rid=f"{e}-0-r:{turn}") for e in range(6)))
        for w in ws:
            w.reply = held
            assert w.keys == [episode_key(b["rid"]) for b in w.bodies]  # the header the router read
        per_worker = [{episode_key(b["rid"]) for b in w.bodies} for w in ws]
        assert per_worker[0].isdisjoint(per_worker[1]) and len(per_worker[0] | per_worker[1]) == 6 and all(per_worker)
        pending = asyncio.create_task(policy.generate([1], SamplingParams(), rid="long:0"))
        while not any(b["rid"] == "long:0" for w in ws for b in w.bodies):
            await asyncio.sleep(0.01)
        assert await policy.abort("long:0") is True
        release.set()
        generation = await pending
    assert [w.aborts for w in ws] == [[{"rid": "long:0"}], [{"rid": "long:0"}]]  # the router has no /abort_request
    assert generation.finish_reason == "abort"
