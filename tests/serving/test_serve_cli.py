"""``agentrl serve`` as a user runs it: SmolLM2 by its built-in name, in a real subprocess that
answers SGLang's API with the model's own tokens and stops cleanly on SIGTERM; bad options end
with one clear line."""

from __future__ import annotations

import signal
import socket

import aiohttp
import pytest

from agentrl.cli import main
from agentrl.policies.base import SamplingParams
from agentrl.policies.embedded import EmbeddedEngine
from tests.serving.conftest import agentrl_serve


async def test_serve_smollm2_by_name_answers_sglang_endpoints_then_stops_on_sigterm(tokenizer):
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True)["input_ids"]
    async with EmbeddedEngine.from_pretrained("smollm2-135m", dtype="float32") as engine:
        expected = await engine.generate(ids, SamplingParams(max_new_tokens=4, temperature=0))
    args = ("--model-path", "smollm2-135m", "--dtype", "float32", "--port", "0", "--served-model-name", "smol")
    with agentrl_serve(*args, stop=signal.SIGTERM) as (_, url):
        async with aiohttp.ClientSession(url) as http:
            for path in ("/health", "/health_generate"):
                async with http.get(path) as r:
                    assert r.status == 200
            body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 4, "temperature": 0}, "return_logprob": True}
            async with http.post("/generate", json=body) as r:
                out = await r.json()
            async with http.get("/get_server_info") as r:
                info = await r.json()
    assert out["output_ids"] == expected.token_ids
    assert [lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]] == pytest.approx(expected.logprobs, abs=1e-4)
    assert url.startswith("http://127.0.0.1:") and info["port"] == int(url.rsplit(":", 1)[1])
    assert {k: info[k] for k in ("model_path", "served_model_name", "dtype", "device", "tp_size", "weight_version")} == {
        "model_path": "smollm2-135m", "served_model_name": "smol", "dtype": "float32", "device": "cpu", "tp_size": 1, "weight_version": "0"}


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "--model-path", "no-such-model"], "unknown model spec 'no-such-model'"),
    (["serve", "--model-path", "smollm2-135m", "--port", "70000"], "--port must lie in [0, 65535]"),
    (["serve", "--model-path", "smollm2-135m", "--max-running-requests", "0"], "--max-running-requests must be >= 1"),
])
def test_bad_options_end_with_one_clear_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_port_in_use_ends_with_one_clear_line(tiny_dir, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model-path", str(tiny_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
