"""SGLang's native API over the embedded engine (SmolLM2, fp32), through real HTTP: response
shapes, batches, stops, aborts, and 400s that say what is wrong."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from agentrl.policies.base import SamplingParams
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.policies.sglang import SGLangPolicy
from agentrl.serving import SGLangServer


@pytest.fixture
async def server(smollm2_fp32, tokenizer, smollm2_dir):
    async with EmbeddedEngine(smollm2_fp32, tokenizer, seed=0) as engine, SGLangServer(engine, tokenizer, model_path=str(smollm2_dir)) as server:
        yield engine, server


@pytest.fixture
async def served(server):
    engine, sglang_server = server
    async with aiohttp.ClientSession(sglang_server.url) as http:
        yield engine, http


def prompt(tokenizer, question: str = "What is 2 + 2?") -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)["input_ids"]


async def test_generate_returns_sglangs_shape_and_the_engines_tokens(served, tokenizer):
    engine, http = served
    ids = prompt(tokenizer)
    async with http.post("/generate", json={"input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 12}, "return_logprob": True, "rid": "r1"}) as r:
        assert r.status == 200
        out = await r.json()
    direct = await engine.generate(ids, SamplingParams(max_new_tokens=12, temperature=0))
    assert out["output_ids"] == direct.token_ids
    meta = out["meta_info"]
    assert meta["id"] == "r1" and meta["prompt_tokens"] == len(ids) and meta["completion_tokens"] == len(direct.token_ids)
    assert meta["weight_version"] == "0"
    assert [t for _, t, _ in meta["output_token_logprobs"]] == direct.token_ids
    assert [lp for lp, _, _ in meta["output_token_logprobs"]] == pytest.approx(direct.logprobs, abs=1e-5)
    assert all(text is None for _, _, text in meta["output_token_logprobs"])
    assert meta["finish_reason"] in ({"type": "length", "length": 12}, {"type": "stop", "matched": tokenizer.eos_token_id})


async def test_text_batches_and_rid_prefixes(served, tokenizer):
    _, http = served
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False) for q in ("Hi", "Name a color.")]
    async with http.post("/generate", json={"text": texts, "rid": "b", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}) as r:
        out = await r.json()
    assert [o["meta_info"]["id"] for o in out] == ["b_0", "b_1"]
    assert "output_token_logprobs" not in out[0]["meta_info"]  # only with return_logprob


async def test_a_stop_string_ends_the_turn_and_is_trimmed_unless_asked_not_to(served, tokenizer):
    _, http = served
    body = {"input_ids": prompt(tokenizer, "Count from 1 to 10, separated by commas."), "sampling_params": {"temperature": 0, "max_new_tokens": 40}}
    async with http.post("/generate", json=body) as r:
        free = (await r.json())["text"]
    stop = free[free.index("3"):][:1]  # a stop string the greedy answer reaches
    for trim in (False, True):
        body["sampling_params"] |= {"stop": [stop], "no_stop_trim": trim}
        async with http.post("/generate", json=body) as r:
            out = await r.json()
        assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
        assert out["text"].endswith(stop) == trim


async def test_abort_request_ends_a_generation_early(served, tokenizer):
    _, http = served
    body = {"input_ids": prompt(tokenizer), "rid": "long", "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}
    pending = asyncio.create_task(http.post("/generate", json=body))
    await asyncio.sleep(1.0)
    async with http.post("/abort_request", json={"rid": "long"}) as r:
        assert r.status == 200
    async with await pending as r:
        out = await r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "abort"
    assert 0 < len(out["output_ids"]) < 2000


@pytest.mark.parametrize(("path", "body"), [
    ("/abort_request", {"rid": "long"}),
    ("/abort_request", {"abort_all": True}),
    ("/pause_generation", {"mode": "abort"}),
])
async def test_aborts_reach_an_async_policy(server, tokenizer, smollm2_dir, path, body):
    """A server over SGLangPolicy (whose abort is a coroutine) over the embedded engine's server:
    each way of aborting ends the generation at the engine."""
    engine, back = server
    async with SGLangPolicy(back.url) as remote, SGLangServer(remote, tokenizer, model_path=str(smollm2_dir)) as front, \
            aiohttp.ClientSession(front.url) as front_http:
        request = {"input_ids": prompt(tokenizer), "rid": "long", "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}
        pending = asyncio.create_task(front_http.post("/generate", json=request))
        await until(lambda: engine.num_running == 1)
        async with front_http.post(path, json=body) as r:
            assert r.status == 200, await r.text()
        async with await asyncio.wait_for(pending, 30) as r:
            out = await r.json()
        async with front_http.post("/continue_generation") as r:
            assert r.status == 200
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and 0 < len(out["output_ids"]) < 2000


async def test_a_failed_batch_item_cancels_the_others(served, tokenizer):
    """The second item's rid is already in flight at the engine (sent there directly, past this
    server's checks): that item fails, and its sibling is cancelled instead of running on."""
    engine, http = served
    long = SamplingParams(max_new_tokens=2000, ignore_eos=True)
    busy = asyncio.create_task(engine.generate(prompt(tokenizer), long, rid="busy"))
    await until(lambda: engine.num_running == 1)
    body = {"input_ids": [prompt(tokenizer, "Hi"), prompt(tokenizer)], "rid": ["sibling", "busy"],
            "sampling_params": {"max_new_tokens": 2000, "ignore_eos": True}}
    async with http.post("/generate", json=body) as r:
        assert r.status == 500 and "'busy' is already in flight" in (await r.json())["error"]["message"]
    async with http.get("/get_server_info") as r:
        assert (await r.json())["internal_states"][0]["num_running"] == 0  # the sibling is no longer in flight
    await asyncio.sleep(0.5)
    assert engine.num_running == 1  # only "busy" decodes
    assert await engine.abort("busy") is True
    assert (await busy).finish_reason == "abort"


async def until(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("body", "reason"), [
    ({"text": "a", "input_ids": [1]}, "exactly one of 'text' and 'input_ids'"),
    ({}, "exactly one of 'text' and 'input_ids'"),
    ({"input_ids": [10**9]}, "'input_ids' must hold token ids"),
    ({"input_ids": [1, 2], "sampling_params": {"repetition_penalty": 1.3}}, "repetition_penalty"),
    ({"input_ids": [1, 2], "sampling_params": {"top_p": 0}}, "top_p"),
    ({"input_ids": [1, 2], "stream": True}, "'stream' is not supported"),
    ({"input_ids": [[1], [2]], "sampling_params": [{}]}, "1 sampling_params for 2 inputs"),
])
async def test_bad_requests_get_a_400_with_the_reason(served, body, reason):
    _, http = served
    async with http.post("/generate", json=body) as r:
        assert r.status == 400
        assert reason in (await r.json())["error"]["message"]


async def test_neutral_values_of_unsupported_options_are_accepted(served):
    _, http = served
    body = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2, "repetition_penalty": 1.0, "n": 1, "min_p": 0.0, "skip_special_tokens": False}}
    async with http.post("/generate", json=body) as r:
        assert r.status == 200


async def test_health_and_model_info(served, smollm2_dir):
    _, http = served
    for path in ("/health", "/health_generate"):
        async with http.get(path) as r:
            assert r.status == 200
    async with http.get("/get_model_info") as r:
        info = await r.json()
    assert info["model_path"] == str(smollm2_dir) and info["is_generation"] is True and info["weight_version"] == "0"
    async with http.post("/generate", data=b"not json") as r:
        assert r.status == 400
    async with http.post("/abort_request", data=b"not json") as r:
        assert r.status == 400 and "abort_request: the body must be JSON" in (await r.json())["error"]["message"]
