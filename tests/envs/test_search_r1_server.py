"""The BM25 retrieval server with Search-R1's API, over real HTTP, and the env against it."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agentrl.envs import Action, Task, make
from agentrl.errors import DataError
from envs_contrib.search_r1.server import BM25Index, load_corpus, make_app

DOCS = [
    {"id": "1", "contents": '"France"\nParis is the capital of France.'},
    {"id": "2", "contents": '"Peru"\nLima is the capital of Peru. The currency of Peru is the sol.'},
    {"title": "Japan", "text": "Tokyo is the capital of Japan. Its currency is the yen."},
]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


@pytest.fixture
async def client(corpus):
    async with TestClient(TestServer(make_app(BM25Index(load_corpus(corpus))))) as client:
        yield client


async def test_retrieve_ranks_by_bm25_in_search_r1s_format(client):
    async with client.post("/retrieve", json={"queries": ["currency of Peru", "capital of Japan", "zebra"], "topk": 2}) as r:
        result = (await r.json())["result"]
    assert result[0][0]["id"] == "2"
    assert result[1][0] == {"id": "3", "contents": '"Japan"\nTokyo is the capital of Japan. Its currency is the yen.'}
    assert result[2] == []  # no shared term: no results
    assert all(len(row) <= 2 for row in result)
    async with client.post("/retrieve", json={"queries": ["Paris"], "topk": 1, "return_scores": True}) as r:
        (hit,) = (await r.json())["result"][0]
    assert hit["document"]["id"] == "1" and hit["score"] > 0


@pytest.mark.parametrize(("body", "reason"), [
    ([1, 2], "JSON object"),
    ({"queries": []}, "non-empty list of strings"),
    ({"queries": ["a", 3]}, "non-empty list of strings"),
    ({"queries": ["a"], "topk": 0}, "'topk'"),
    ({"queries": ["a"], "topk": "3"}, "'topk'"),
    ({"queries": ["a"], "return_scores": "yes"}, "'return_scores'"),
])
async def test_bad_bodies_get_a_400_with_the_reason(client, body, reason):
    async with client.post("/retrieve", json=body) as r:
        assert r.status == 400 and reason in (await r.json())["error"]
    async with client.post("/retrieve", data=b"{not json") as r:
        assert r.status == 400


def test_a_bad_corpus_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(DOCS[0]) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_corpus(path)


def test_a_corpus_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(DOCS[0]).encode() + b'\n{"id": "2", "contents": "Bogot\xe1"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl:2: not UTF-8: byte 0xe1"):
        load_corpus(path)


async def test_the_env_searches_the_server(client):
    env = make("contrib/SearchR1-v0", retriever_url=str(client.make_url("/retrieve")), topk=1)
    await env.reset(Task("What currency does Peru use", ["sol"], index=0))
    found = await env.step(Action("<search>Peru currency</search>"))
    assert "Doc 1(Title: Peru) Lima is the capital of Peru. The currency of Peru is the sol." in found.observation[0]["content"]
    answer = await env.step(Action("<answer>the sol</answer>"))
    assert answer.reward == 1.0
    await env.close()


def test_the_server_keeps_jax_off_the_gpu(tmp_path):
    """bm25s runs JAX at import where JAX is installed; on a GPU machine JAX would take 75% of the
    GPU's memory from the trainer and engines. A stand-in ``jax`` records what JAX was told."""
    import os
    import subprocess
    import sys

    fake = tmp_path / "site" / "jax"
    fake.mkdir(parents=True)
    seen = tmp_path / "platforms.txt"
    (fake / "__init__.py").write_text(f"import os\nopen({str(seen)!r}, 'w').write(os.environ.get('JAX_PLATFORMS', 'unset'))\n")
    (fake / "lax.py").write_text("import numpy as np\ndef top_k(x, k):\n    return np.sort(x)[-k:], np.argsort(x)[-k:]\n")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", "import envs_contrib.search_r1.server"], env=env, check=True, timeout=120)
    assert seen.read_text() == "cpu"
