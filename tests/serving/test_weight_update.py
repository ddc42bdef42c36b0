"""Weight sync from a trainer (this process) to a real ``agentrl serve`` process (a tiny random
Llama, fp32): over disk and over a gloo process group. After each push the server's version is
the new one and the log-probs it reports for its tokens are those of the pushed weights.
Also: bodies refused with reasons, pickle files never loaded, pause / continue, a FIFO in a
weights directory refused without blocking the server, and SIGTERM stopping the server while a
group join waits for a peer that never comes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import time

import aiohttp
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from agentrl.engines.weight_sync import DiskWeightSync, DistributedWeightSync, TensorWeightSync
from agentrl.serving.safetensors_dir import write_safetensors_dir
from agentrl.serving.tensor_bucket import flatten, serialize, sharing_by_file_name
from tests.serving.conftest import agentrl_serve

PROMPT = [1, 504, 3001, 22, 9]


@pytest.fixture(scope="module")
def server(tiny_dir):
    with agentrl_serve("--model-path", str(tiny_dir), "--dtype", "float32", "--port", "0", "--random-seed", "0") as (_, url):
        yield url


@pytest.fixture
async def http(server):
    async with aiohttp.ClientSession(server, timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


@pytest.fixture
def model(tiny_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()


def perturb(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # a tied embedding is one parameter: perturbed once
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)


def local_logprobs(model, tokens: list[int]) -> torch.Tensor:
    """Log-probs of ``tokens`` after PROMPT, teacher-forced through ``model`` (temperature 1)."""
    ids = torch.tensor([PROMPT + tokens])
    with torch.no_grad():
        logits = model(ids).logits[0, len(PROMPT) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]


async def sample(http, max_new_tokens: int = 12, **params) -> dict:
    body = {"input_ids": PROMPT, "return_logprob": True,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 1.0, "sampling_seed": 3, **params}}
    async with http.post("/generate", json=body) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def assert_serves(http, model, version: str, old_model) -> None:
    out = await sample(http)
    served = torch.tensor([lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]])
    assert out["meta_info"]["weight_version"] == version
    assert (served - local_logprobs(model, out["output_ids"])).abs().max() < 1e-4
    assert (served - local_logprobs(old_model, out["output_ids"])).abs().max() > 1e-2  # the weights did change
    async with http.get("/get_weight_version") as r:
        assert (await r.json())["weight_version"] == version


async def test_disk_sync_loads_the_pushed_weights_and_version(server, http, model, tiny_dir, tmp_path):
    before = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    perturb(model, seed=1)
    async with DiskWeightSync([server], tmp_path / "weights") as sync:
        await sync.push(model.state_dict().items(), weight_version=11)
        assert sync.last_push.bytes == sum(p.numel() * 4 for p in model.parameters())  # the tied lm_head went once
    assert [p.name for p in (tmp_path / "weights").iterdir()] == ["model.safetensors"]
    await assert_serves(http, model, "11", before)


async def test_distributed_gloo_sync_in_buckets_beside_the_trainers_own_default_group(server, http, model, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'trainer_pg'}", rank=0, world_size=1)
    try:
        async with DistributedWeightSync([server], backend="gloo", bucket_bytes=2**16) as sync:
            for version, seed in ((21, 2), (22, 3)):  # the second push reuses the group
                old = AutoModelForCausalLM.from_config(model.config).eval()
                old.load_state_dict(model.state_dict())
                perturb(model, seed)
                await sync.push(model.state_dict().items(), weight_version=version)
                assert sync.last_push.buckets >= 3
                await assert_serves(http, model, str(version), old)
            leave = [http.post("/destroy_weights_update_group", json={"group_name": sync.group_name}) for _ in range(2)]
            replies = sorted([(r.status, (await r.json())["message"]) for r in await asyncio.gather(*leave)])
            assert replies[0] == (200, "Left 'weight_update_group'.") and replies[1][0] == 400  # a repeat, not a 500
            assert "not a joined weight update group" in replies[1][1]
        summed = torch.ones(2)
        dist.all_reduce(summed)  # the trainer's default group still works, alone
        assert summed.tolist() == [1.0, 1.0] and dist.get_world_size() == 1
    finally:
        dist.destroy_process_group()
    body = {"names": ["model.norm.weight"], "dtypes": ["float32"], "shapes": [[64]]}
    async with http.post("/update_weights_from_distributed", json=body) as r:  # the engine left the group
        assert r.status == 400 and "not a joined weight update group" in (await r.json())["message"]


async def test_pickle_files_are_never_loaded_and_bad_checkpoints_change_nothing(http, model, tmp_path):
    marker = tmp_path / "unpickled"
    only_pickle = tmp_path / "only_pickle"
    only_pickle.mkdir()
    (only_pickle / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsCodeWhenUnpickled(str(marker))))
    wrong_shape = tmp_path / "wrong_shape"
    wrong_shape.mkdir()
    save_file({"model.norm.weight": torch.zeros(3)}, str(wrong_shape / "model.safetensors"))
    unknown = tmp_path / "unknown"
    write_safetensors_dir(unknown, [("model.layers.0.mlp.nonsense", torch.zeros(2))])
    before = await sample(http)
    for directory, reason in ((only_pickle, "refusing pytorch_model.bin: pickle files"), (wrong_shape, "model.norm.weight [3] (model: [64])"),
                              (unknown, "not in the model, e.g. model.layers.0.mlp.nonsense")):
        async with http.post("/update_weights_from_disk", json={"model_path": str(directory), "weight_version": "99"}) as r:
            reply = await r.json()
        assert r.status == 400 and reply["success"] is False and reason in reply["message"], reply
    after = await sample(http)
    assert after["output_ids"] == before["output_ids"] and after["meta_info"] == before["meta_info"] | {k: after["meta_info"][k] for k in ("id", "e2e_latency")}
    mixed = tmp_path / "mixed"  # safetensors beside a pickle: only the safetensors file is read
    write_safetensors_dir(mixed, model.state_dict().items())
    (mixed / "pytorch_model.bin").write_bytes((only_pickle / "pytorch_model.bin").read_bytes())
    async with http.post("/update_weights_from_disk", json={"model_path": str(mixed)}) as r:
        assert r.status == 200 and (await r.json())["success"] is True
    assert not marker.exists()
    assert (await sample(http))["meta_info"]["weight_version"] == before["meta_info"]["weight_version"]


class _RunsCodeWhenUnpickled:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


BAD_BODIES = [
    ("/update_weights_from_disk", {}, "'model_path' is required"),
    ("/update_weights_from_disk", {"model_path": 3}, "'model_path' must be a string"),
    ("/update_weights_from_disk", {"model_path": "/nonexistent"}, "/nonexistent is not a directory"),
    ("/update_weights_from_disk", {"model_path": ".", "load_format": "pt"}, "'load_format' 'pt' is not supported"),
    ("/update_weights_from_disk", {"model_path": ".", "weight_version": "v2"}, "'weight_version' must be an integer"),
    ("/update_weights_from_disk", {"model_path": ".", "modelpath": "."}, "unknown field(s) modelpath"),
    ("/init_weights_update_group", {"master_address": "127.0.0.1", "rank_offset": 1, "world_size": 2, "backend": "gloo"}, "'master_port' is required"),
    ("/init_weights_update_group", {"master_address": "127.0.0.1", "master_port": 29999, "rank_offset": 0, "world_size": 2, "backend": "gloo"},
     "'rank_offset' must lie in [1, world_size)"),
    ("/init_weights_update_group", {"master_address": "127.0.0.1", "master_port": 29999, "rank_offset": 1, "world_size": 2, "backend": "mpi"},
     "'backend' must be one of gloo, nccl"),
    ("/init_weights_update_group", {"master_address": "127.0.0.1", "master_port": 29999, "rank_offset": 1, "world_size": 2},
     "'backend' 'nccl' needs the engine on a CUDA device"),
    ("/update_weights_from_distributed", {"names": ["a"], "dtypes": ["float32"], "shapes": [[1]]}, "'group_name' 'weight_update_group' is not a joined"),
    ("/update_weights_from_distributed", {"names": ["a", "b"], "dtypes": ["float32"], "shapes": [[1]]}, "one entry per tensor, got 2, 1, 1"),
    ("/update_weights_from_distributed", {"names": ["a"], "dtypes": ["int4"], "shapes": [[1]]}, "'dtypes' entry 'int4' for 'a'"),
    ("/update_weights_from_distributed", {"names": ["a"], "dtypes": ["float32"], "shapes": [[-1]]}, "'shapes' entry for 'a'"),
    ("/destroy_weights_update_group", {"group_name": "g"}, "'group_name' 'g' is not a joined"),
    ("/update_weight_version", {"new_version": "latest"}, "'new_version' must be an integer"),
    ("/pause_generation", {"mode": "later"}, "'mode' must be one of abort, retract, in_place"),
    ("/continue_generation", {"torch_empty_cache": "yes"}, "'torch_empty_cache' must be a boolean"),
    ("/pause_generation", [], "the body must be a JSON object"),
]


@pytest.mark.parametrize(("path", "body", "reason"), BAD_BODIES)
async def test_bad_bodies_get_a_400_that_names_the_field(http, path, body, reason):
    async with http.post(path, json=body) as r:
        reply = await r.json()
    assert r.status == 400
    assert reason in (reply.get("message") or reply["error"]["message"])


async def test_a_body_that_is_not_json_gets_a_400(http):
    async with http.post("/update_weights_from_disk", data=b"{model_path:") as r:
        assert r.status == 400 and "must be JSON" in (await r.json())["message"]


async def test_pause_holds_new_requests_until_continue(http):
    async with http.post("/pause_generation", json={}) as r:
        assert (await r.json())["status"] == "ok"
    waiting = asyncio.create_task(sample(http, max_new_tokens=4))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    assert (await server_state(http)) == {"paused": True, "num_running": 0, "num_waiting": 1}
    async with http.post("/continue_generation") as r:
        assert r.status == 200
    out = await asyncio.wait_for(waiting, 60)
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 4}


async def test_abort_mode_ends_requests_in_flight_and_flush_cache_waits_for_them(http):
    running = asyncio.create_task(sample(http, max_new_tokens=30000, ignore_eos=True))
    await until_running(http)
    async with http.post("/flush_cache") as r:
        assert r.status == 400  # a request is running
    async with http.post("/pause_generation", json={"mode": "abort"}) as r:
        assert r.status == 200
    out = await asyncio.wait_for(running, 60)
    assert out["meta_info"]["finish_reason"]["type"] == "abort" and len(out["output_ids"]) < 30000
    async with http.get("/flush_cache") as r:
        assert r.status == 200
    async with http.post("/continue_generation", json={"torch_empty_cache": True}) as r:
        assert r.status == 200


async def test_retract_mode_keeps_requests_in_flight_running_while_new_ones_wait(http):
    running = asyncio.create_task(sample(http, max_new_tokens=30000, ignore_eos=True))
    await until_running(http)
    async with http.post("/pause_generation", json={"mode": "retract"}) as r:
        assert r.status == 200
    waiting = asyncio.create_task(sample(http, max_new_tokens=2))
    await asyncio.sleep(0.5)
    assert not running.done() and not waiting.done()
    assert await server_state(http) == {"paused": True, "num_running": 1, "num_waiting": 1}
    async with http.post("/abort_request", json={"abort_all": True}) as r:
        assert r.status == 200
    assert (await asyncio.wait_for(running, 60))["meta_info"]["finish_reason"]["type"] == "abort"
    async with http.post("/continue_generation") as r:
        assert r.status == 200
    assert (await asyncio.wait_for(waiting, 60))["meta_info"]["finish_reason"]["type"] == "length"


async def test_a_fifo_in_the_weights_directory_is_refused_and_the_server_keeps_answering(http, tmp_path):
    directory = tmp_path / "fifo"
    directory.mkdir()
    fifo = directory / "model.safetensors"
    os.mkfifo(fifo)
    update = asyncio.create_task(post(http, "/update_weights_from_disk", {"model_path": str(directory)}))
    try:
        await asyncio.sleep(0.5)  # the server has reached the directory
        started = time.monotonic()
        async with http.get("/health", timeout=aiohttp.ClientTimeout(total=5)) as r:
            assert r.status == 200
        assert time.monotonic() - started < 2
        status, reply = await asyncio.wait_for(update, 10)
    finally:
        release_fifo_reader(fifo)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(update, 10)
    assert status == 400 and reply["success"] is False
    assert f"{fifo} is not a regular file" in reply["message"]


def release_fifo_reader(fifo) -> None:
    """Open the FIFO's write end and close it: a reader blocked opening it reads EOF instead."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: nobody reads it
        pass


async def post(http, path: str, body: dict) -> tuple[int, dict]:
    async with http.post(path, json=body) as r:
        return r.status, await r.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_sigterm_stops_the_server_promptly_while_a_group_join_waits_for_its_peer(tiny_dir):
    """The trainer (rank 0) never comes: the join would wait 10 minutes; SIGTERM ends it."""
    with agentrl_serve("--model-path", str(tiny_dir), "--dtype", "float32", "--port", "0", stop=signal.SIGTERM) as (proc, url):
        body = {"master_address": "127.0.0.1", "master_port": free_port(), "rank_offset": 1, "world_size": 2, "backend": "gloo"}
        async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=30)) as session:
            joining = asyncio.create_task(post(session, "/init_weights_update_group", body))
            await asyncio.sleep(1.0)
            assert not joining.done()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            status, reply = await asyncio.wait_for(joining, 30)
            returncode = await asyncio.to_thread(proc.wait, 30)
        stopped_s = time.monotonic() - started
    # seconds, not the join's 10 minutes (the bound leaves room for a loaded 2-core machine: 6.6 s seen)
    assert returncode == 0 and stopped_s < 30, f"agentrl serve took {stopped_s:.1f}s to stop (status {returncode})"
    assert status == 400 and "the server is shutting down" in reply["message"]


async def server_state(http) -> dict:
    async with http.get("/get_server_info") as r:
        return (await r.json())["internal_states"][0]


async def until_running(http, timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await server_state(http))["num_running"] == 0:
        assert asyncio.get_running_loop().time() < deadline, "the request never started"
        await asyncio.sleep(0.05)


async def test_tensor_sync_hands_weights_over_by_handle_in_sglangs_flattened_buckets(server, http, model):
    """TensorWeightSync, as --colocate uses it, into a real agentrl serve process; CPU tensors go
    by shared memory as CUDA ones go by IPC handle: only metadata crosses HTTP."""
    for version, seed in ((31, 4), (32, 5)):
        old = AutoModelForCausalLM.from_config(model.config).eval()
        old.load_state_dict(model.state_dict())
        perturb(model, seed)
        async with TensorWeightSync([server], device="cpu", bucket_bytes=2**16) as sync:
            await sync.push(model.state_dict().items(), weight_version=version)
            assert sync.last_push.buckets >= 3
        await assert_serves(http, model, str(version), old)


async def test_a_tensor_payload_naming_anything_but_tensors_is_refused(http, tmp_path):
    marker = tmp_path / "unpickled"
    crafted = base64.b64encode(pickle.dumps(_RunsCodeWhenUnpickled(str(marker)))).decode()
    before = await sample(http)
    for load_format in ("flattened_bucket", None):
        body = {"serialized_named_tensors": [crafted], "load_format": load_format, "weight_version": "77"}
        async with http.post("/update_weights_from_tensor", json=body) as r:
            reply = await r.json()
        assert r.status == 400 and "which a tensor payload never needs" in reply["message"], reply
    assert not marker.exists() and (await sample(http))["output_ids"] == before["output_ids"]
    body = {"serialized_named_tensors": ["a", "b"], "load_format": "flattened_bucket"}
    async with http.post("/update_weights_from_tensor", json=body) as r:
        assert r.status == 400 and "one entry per tensor-parallel rank; this server has 1, got 2" in (await r.json())["message"]
    flat, [meta] = flatten([("model.norm.weight", torch.ones(4))])
    for metadata, reason in (([{"name": "model.norm.weight"}], "metadata[0] is {'name': 'model.norm.weight'}; expected FlattenedTensorMetadata"),
                             ([dataclasses.replace(meta, shape=torch.Size([3, 3]))], "elements [0, 4) of a 4-element bucket cannot hold shape [3, 3]"),
                             ([dataclasses.replace(meta, end_idx=8)], "elements [0, 8) of a 4-element bucket")):
        with sharing_by_file_name():  # as TensorWeightSync sends CPU tensors to a process it did not start
            payload = serialize({"flattened_tensor": flat, "metadata": metadata})
        body = {"serialized_named_tensors": [payload], "load_format": "flattened_bucket"}
        async with http.post("/update_weights_from_tensor", json=body) as r:
            reply = await r.json()
        assert r.status == 400 and reason in reply["message"], reply
    assert (await sample(http))["output_ids"] == before["output_ids"]
