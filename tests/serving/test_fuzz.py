"""Malformed bodies over real HTTP while well-formed requests decode beside them.

The server is the one ``agentrl serve`` runs (:class:`SGLangServer` over the embedded engine; here
the tiny random Llama of ``conftest.py``, in process so the test can see the engine's batch). Each
malformed body gets a 400 whose message names the field and the reason, and the two requests in
flight at that moment finish as if it never came. Bodies are sent with Python's ``json.dumps``,
which writes ``NaN`` and ``Infinity`` the way Python's parser (the server's) reads them.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.policies.embedded import EmbeddedEngine
from agentrl.serving import SGLangServer

PROMPT = [1, 504, 3001, 22, 9]
GOOD_TOKENS = 64
CONTEXT = 32768  # the tiny model's max_position_embeddings
VOCAB = 49152


def generate(**fields: object) -> dict[str, object]:
    return {"input_ids": PROMPT} | fields


def sampling(**params: object) -> dict[str, object]:
    return generate(sampling_params={"max_new_tokens": 4} | params)


BAD = [
    # sampling_params: types, entries, ranges, finiteness
    ("/generate", sampling(stop=5), "'stop' must be a string or a list, got int 5"),
    ("/generate", sampling(stop=[["a"]]), "'stop' entries must be strings, got list ['a']"),
    ("/generate", sampling(stop=[5]), "'stop' entries must be strings, got int 5"),
    ("/generate", sampling(stop=[""]), "stop must hold non-empty strings, got str ''"),
    ("/generate", sampling(stop=""), "stop must hold non-empty strings, got str ''"),
    ("/generate", sampling(temperature=math.nan), "temperature must be a finite number >= 0, got float nan"),
    ("/generate", sampling(temperature=-1), "temperature must be a finite number >= 0, got int -1"),
    ("/generate", sampling(top_p=math.inf), "top_p must be a finite number in (0, 1], got float inf"),
    ("/generate", sampling(top_k=0), "top_k must be an integer, -1 (all) or >= 1, got int 0"),
    ("/generate", sampling(max_new_tokens=math.inf), "'max_new_tokens' must be an integer, got float inf"),
    ("/generate", sampling(max_new_tokens=1.5), "'max_new_tokens' must be an integer, got float 1.5"),
    ("/generate", sampling(max_new_tokens=-1), "max_new_tokens must be an integer >= 0, got int -1"),
    ("/generate", sampling(sampling_seed="7"), "'sampling_seed' must be an integer, got str '7'"),
    ("/generate", sampling(sampling_seed=True), "'sampling_seed' must be an integer, got bool True"),
    ("/generate", sampling(sampling_seed=2**64), "seed (SGLang's sampling_seed) must be an integer in [-2**63, 2**63), got int 18446744073709551616"),
    ("/generate", sampling(stop_token_ids=[[1]]), "'stop_token_ids' entries must be integers, got list [1]"),
    ("/generate", sampling(stop_token_ids=[True]), "'stop_token_ids' entries must be integers, got bool True"),
    ("/generate", sampling(stop_token_ids=5), "'stop_token_ids' must be a list, got int 5"),
    ("/generate", sampling(ignore_eos="false"), "'ignore_eos' must be a boolean, got str 'false'"),
    ("/generate", sampling(no_stop_trim=1), "'no_stop_trim' must be a boolean, got int 1"),
    ("/generate", sampling(temprature=0.5), "sampling_params: unknown field(s) temprature"),
    ("/generate", sampling(repetition_penalty=1.3), "'repetition_penalty' is not supported by this server"),
    ("/generate", sampling(min_p=math.nan), "'min_p' is not supported by this server"),
    ("/generate", generate(sampling_params="x"), "'sampling_params' must be an object or a list, got str 'x'"),
    ("/generate", generate(input_ids=[PROMPT, PROMPT], sampling_params=[{}, 5]), "'sampling_params' entries must be objects, got int 5"),
    ("/generate", generate(input_ids=[PROMPT, PROMPT], sampling_params=[{}]), "1 sampling_params for 2 inputs"),
    # the request's own fields
    ("/generate", generate(return_logprob="false"), "'return_logprob' must be a boolean, got str 'false'"),
    ("/generate", generate(stream=True), "'stream' is not supported by this server"),
    ("/generate", generate(top_logprobs_num=5), "'top_logprobs_num' is not supported by this server"),
    ("/generate", generate(foo=1), "unknown field(s) foo"),
    ("/generate", [PROMPT], "the body must be a JSON object, got list"),
    ("/generate", {"text": "a", "input_ids": PROMPT}, "give exactly one of 'text' and 'input_ids'"),
    ("/generate", {"text": ["a", 1]}, "'text' entries must be strings, got int 1"),
    ("/generate", {"text": ""}, "prompt 0 is empty"),
    ("/generate", generate(input_ids={"a": 1}), "'input_ids' must be a list, got dict"),
    ("/generate", generate(input_ids=[]), "'input_ids' is empty"),
    ("/generate", generate(input_ids=[1, True]), f"'input_ids' must hold token ids (integers in [0, {VOCAB})), got bool True"),
    ("/generate", generate(input_ids=[1, 2.0]), f"'input_ids' must hold token ids (integers in [0, {VOCAB})), got float 2.0"),
    ("/generate", generate(input_ids=[1, VOCAB]), f"'input_ids' must hold token ids (integers in [0, {VOCAB})), got int {VOCAB}"),
    ("/generate", generate(input_ids=[PROMPT, 3]), "'input_ids' mixes token ids and lists"),
    ("/generate", generate(input_ids=[PROMPT, []]), "prompt 1 is empty"),
    ("/generate", lambda: generate(input_ids=[5] * (CONTEXT + 1)),  # built when sent: a short repr in reports
     f"the input ({CONTEXT + 1} tokens) is longer than the model's context length ({CONTEXT} tokens)"),
    ("/generate", generate(rid={"a": 1}), "'rid' must be a string or a list, got dict"),
    ("/generate", generate(rid=["a", "b"]), "'rid' has 2 entries for 1 input"),
    ("/generate", generate(input_ids=[PROMPT] * 3, rid=["a", "b"]), "'rid' has 2 entries for 3 inputs"),
    ("/generate", generate(input_ids=[PROMPT] * 2, rid=["a", 5]), "'rid' entries must be strings, got int 5"),
    ("/generate", generate(input_ids=[PROMPT] * 2, rid=["a", "a"]), "'rid' 'a' is given twice"),
    ("/generate", generate(rid="good-0"), "'rid' 'good-0' is already in flight"),
    # /abort_request
    ("/abort_request", {"rid": ["a", "b"]}, "abort_request: 'rid' must be a string, got list"),
    ("/abort_request", {"abort_all": "yes"}, "abort_request: 'abort_all' must be a boolean, got str 'yes'"),
    ("/abort_request", {}, "abort_request: give 'rid' or 'abort_all': true"),
]


@pytest.fixture(scope="module")
def tiny_model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


@pytest.fixture
def one_torch_thread():
    """The tiny model decodes fastest on one thread (shared CI cores make threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
async def served(tiny_model, tokenizer, tiny_dir, one_torch_thread):
    async with (
        EmbeddedEngine(tiny_model, tokenizer, seed=0) as engine,
        SGLangServer(engine, tokenizer, model_path=str(tiny_dir)) as server,
        aiohttp.ClientSession(server.url, timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        yield engine, http


async def good(http: aiohttp.ClientSession, i: int) -> dict:
    body = {"input_ids": PROMPT, "rid": f"good-{i}", "return_logprob": True,
            "sampling_params": {"max_new_tokens": GOOD_TOKENS, "ignore_eos": True, "sampling_seed": i}}
    async with http.post("/generate", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


@pytest.mark.parametrize(("path", "body", "reason"), BAD, ids=[f"{path[1:]}-{i}" for i, (path, _, _) in enumerate(BAD)])
async def test_a_malformed_body_gets_a_400_with_its_reason_and_spares_the_requests_in_flight(served, path, body, reason):
    engine, http = served
    in_flight = [asyncio.create_task(good(http, i)) for i in range(2)]
    try:
        deadline = time.monotonic() + 30
        while engine.num_running < 2:
            assert time.monotonic() < deadline and not any(t.done() for t in in_flight), "the good requests never ran"
            await asyncio.sleep(0.001)
        async with http.post(path, json=body() if callable(body) else body) as r:
            assert r.status == 400, (await r.text())[:500]
            assert reason in (await r.json())["error"]["message"]
        assert engine.num_running == 2, "the good requests were no longer in flight when the bad one was answered"
        answers = await asyncio.gather(*in_flight)
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
    for i, out in enumerate(answers):
        assert out["meta_info"]["id"] == f"good-{i}"
        assert out["meta_info"]["finish_reason"] == {"type": "length", "length": GOOD_TOKENS}
        assert len(out["output_ids"]) == len(out["meta_info"]["output_token_logprobs"]) == GOOD_TOKENS
