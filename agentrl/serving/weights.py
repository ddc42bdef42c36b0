"""SGLang's weight-update endpoints over a :class:`~agentrl.policies.Policy`.

Request fields, defaults and replies follow SGLang's ``io_struct`` and ``http_server``:

* ``POST /update_weights_from_disk`` ``{model_path, load_format?, abort_all_requests?,
  weight_version?, flush_cache?, keep_pause?, ...}`` loads every ``*.safetensors`` file of the
  directory ``model_path`` (pickle files are never read, see
  :mod:`agentrl.serving.safetensors_dir`). Reply ``{success, message, num_paused_requests}``.
* ``POST /init_weights_update_group`` ``{master_address, master_port, rank_offset, world_size,
  group_name="weight_update_group", backend="nccl"}``: joins the trainer's weight-update group
  as rank ``rank_offset`` (see :mod:`agentrl.serving.process_group`); returns once every rank
  has joined. Reply ``{success, message}``.
* ``POST /update_weights_from_distributed`` ``{names, dtypes, shapes, group_name, flush_cache,
  abort_all_requests, weight_version, load_format, torch_empty_cache}``: receives one broadcast
  from rank 0 per name, in order, then loads them. Reply ``{success, message}``.
* ``POST /update_weights_from_tensor`` ``{serialized_named_tensors, load_format, flush_cache,
  abort_all_requests, weight_version, ...}``: one entry per tensor-parallel rank (here: one), a
  tensor payload shared by handle from a process on this node (CUDA IPC, shared memory), in
  SGLang's flattened-bucket format or as a list of ``(name, tensor)``; read through an allowlist
  (:mod:`agentrl.serving.tensor_bucket`). Reply ``{success, message}``.
* ``POST /destroy_weights_update_group`` ``{group_name}``; ``POST /update_weight_version``
  ``{new_version, abort_all_requests=true}``.

A bad body gets a 400 ``{success: false, message}`` naming the field, before anything is loaded.
Names and shapes are checked against the policy's model (when it exposes one, as the embedded
engine does) before any tensor is loaded, so a wrong checkpoint leaves the weights as they were;
for a distributed update the tensors are still received, keeping the collective in step.
While weights load, new ``/generate`` requests wait (:class:`~agentrl.serving.gate.RequestGate`)
and the policy lets running ones finish first, so no request runs on a mix of versions.
``weight_version`` is a string in SGLang; agentrl's engines keep integers, so it must spell one.
The directory is listed and its headers read off the event loop; anything but a regular file
named ``*.safetensors`` (a FIFO, a device) is refused with a 400 before it is opened. Collectives
run on a daemon thread (:class:`~agentrl.serving.daemon_worker.DaemonWorker`): when the server
stops, requests still waiting on one (a join whose peer never comes) are answered at once and the
call is abandoned, so SIGTERM stops the server promptly.
The CUDA-graph, cache and memory options SGLang has (``flush_cache``, ``torch_empty_cache``,
``recapture_cuda_graph``, ``token_step``) are accepted and have nothing to act on here.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import logging
from pathlib import Path
from typing import Any

import torch
from aiohttp import web
from torch import nn

from agentrl.errors import PolicyError
from agentrl.policies.base import Policy
from agentrl.serving import process_group
from agentrl.serving.bodies import (
    BadRequest,
    Field,
    parse_body,
    parse_weight_version,
    read_json,
)
from agentrl.serving.daemon_worker import DaemonWorker
from agentrl.serving.gate import RequestGate, abort_requests
from agentrl.serving.safetensors_dir import iter_tensors, read_shapes, safetensors_files
from agentrl.serving.tensor_bucket import PayloadError, decode

log = logging.getLogger(__name__)

GROUP = "weight_update_group"
DISK_FIELDS = {
    "model_path": Field(str), "load_format": Field(str, None), "abort_all_requests": Field(bool, False),
    "weight_version": Field((str, int), None), "flush_cache": Field(bool, True), "is_async": Field(bool, False),
    "torch_empty_cache": Field(bool, False), "keep_pause": Field(bool, False), "recapture_cuda_graph": Field(bool, False),
    "token_step": Field(int, 0), "manifest": Field(dict, None),
}
INIT_FIELDS = {
    "master_address": Field(str), "master_port": Field(int), "rank_offset": Field(int), "world_size": Field(int),
    "group_name": Field(str, GROUP), "backend": Field(str, "nccl"),
}
DISTRIBUTED_FIELDS = {
    "names": Field(list), "dtypes": Field(list), "shapes": Field(list), "group_name": Field(str, GROUP),
    "flush_cache": Field(bool, True), "abort_all_requests": Field(bool, False), "weight_version": Field((str, int), None),
    "load_format": Field(str, None), "torch_empty_cache": Field(bool, False),
}
TENSOR_FIELDS = {
    "serialized_named_tensors": Field(list, items=str), "load_format": Field(str, None), "flush_cache": Field(bool, True),
    "abort_all_requests": Field(bool, False), "weight_version": Field((str, int), None), "disable_draft_model": Field(bool, False),
    "torch_empty_cache": Field(bool, False),
}
TENSOR_FORMATS = (None, "flattened_bucket")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
DISK_FORMATS = (None, "auto", "safetensors")
JOIN_TIMEOUT = datetime.timedelta(minutes=10)
LEAVE_TIMEOUT_S = 10.0
"""How long closing waits to leave each group; past it the group is abandoned with the process."""
SHUTTING_DOWN = "the server is shutting down"


class WeightsAPI:
    """The weight handlers. Collectives run on one daemon thread of their own, so the event loop
    keeps serving while a group rendezvous or a broadcast blocks; :meth:`shutdown` answers the
    requests waiting on one, :meth:`aclose` leaves every group and stops that thread."""

    def __init__(self, policy: Policy, gate: RequestGate) -> None:
        self.policy, self.gate = policy, gate
        self.groups: dict[str, process_group.WeightUpdateGroup] = {}
        self._collectives = DaemonWorker("agentrl-weight-group")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/update_weights_from_disk", self.update_weights_from_disk),
            web.post("/init_weights_update_group", self.init_weights_update_group),
            web.post("/update_weights_from_distributed", self.update_weights_from_distributed),
            web.post("/update_weights_from_tensor", self.update_weights_from_tensor),
            web.post("/destroy_weights_update_group", self.destroy_weights_update_group),
            web.post("/update_weight_version", self.update_weight_version),
        ]

    async def update_weights_from_disk(self, request: web.Request) -> web.Response:
        try:
            body = parse_body(await read_json(request, endpoint="update_weights_from_disk"), DISK_FIELDS, endpoint="update_weights_from_disk")
            version = parse_weight_version(body["weight_version"], endpoint="update_weights_from_disk")
            files = await asyncio.to_thread(self._checked_disk_files, body)
        except BadRequest as e:
            return _failure(str(e), num_paused_requests=0)
        await self._abort_all(body["abort_all_requests"])
        async with self.gate.updating():
            error = await self._load(iter_tensors(files), version)
            paused = self.gate.waiting
        if error:
            return _failure(error, num_paused_requests=paused)
        if body["keep_pause"]:
            self.gate.pause()
        message = f"Loaded the weights of {body['model_path']}.{_version_note(version)}"
        return web.json_response({"success": True, "message": message, "num_paused_requests": paused})

    async def update_weights_from_tensor(self, request: web.Request) -> web.Response:
        endpoint = "update_weights_from_tensor"
        try:
            body = parse_body(await read_json(request, endpoint=endpoint), TENSOR_FIELDS, endpoint=endpoint)
            version = parse_weight_version(body["weight_version"], endpoint=endpoint)
            named = await asyncio.to_thread(_decoded_tensors, body)  # maps the sender's memory: off the loop
            _check_shapes(self.policy, {name: tuple(t.shape) for name, t in named}, endpoint=endpoint)
        except BadRequest as e:
            return _failure(str(e))
        await self._abort_all(body["abort_all_requests"])
        async with self.gate.updating():
            error = await self._load(named, version)
        del named  # the handles: the sender may free the memory once this answers
        if error:
            return _failure(error)
        return web.json_response({"success": True, "message": f"Loaded {endpoint}.{_version_note(version)}"})

    async def init_weights_update_group(self, request: web.Request) -> web.Response:
        try:
            body = parse_body(await read_json(request, endpoint="init_weights_update_group"), INIT_FIELDS, endpoint="init_weights_update_group")
            self._check_init(body)
        except BadRequest as e:
            return _failure(str(e))
        join = functools.partial(
            process_group.join, master_address=body["master_address"], master_port=body["master_port"], rank=body["rank_offset"],
            world_size=body["world_size"], group_name=body["group_name"], backend=body["backend"], timeout=JOIN_TIMEOUT)
        try:
            group = await self._collectives.run(join)
        except Exception as e:
            return _failure(f"init_weights_update_group: joining {body['group_name']!r} failed: {e}")
        self.groups[group.name] = group
        return web.json_response({"success": True, "message": f"Joined {group.name!r} as rank {group.rank} of {group.world_size}."})

    async def update_weights_from_distributed(self, request: web.Request) -> web.Response:
        endpoint = "update_weights_from_distributed"
        try:
            body = parse_body(await read_json(request, endpoint=endpoint), DISTRIBUTED_FIELDS, endpoint=endpoint)
            specs = _tensor_specs(body)
            version = parse_weight_version(body["weight_version"], endpoint=endpoint)
            group = self._group(body["group_name"], endpoint=endpoint)
            if body["load_format"] is not None:
                raise BadRequest(f"{endpoint}: 'load_format' {body['load_format']!r} is not supported; omit it")
        except BadRequest as e:
            return _failure(str(e))
        await self._abort_all(body["abort_all_requests"])
        async with self.gate.updating():
            error = await self._receive_and_load(group, specs, version)
        if error:
            return _failure(error)
        return web.json_response({"success": True, "message": f"Loaded {len(specs)} tensors from {group.name!r}.{_version_note(version)}"})

    async def destroy_weights_update_group(self, request: web.Request) -> web.Response:
        endpoint = "destroy_weights_update_group"
        try:
            body = parse_body(await read_json(request, endpoint=endpoint, empty_ok=True), {"group_name": Field(str, GROUP)}, endpoint=endpoint)
            group = self._group(body["group_name"], endpoint=endpoint)
        except BadRequest as e:
            return _failure(str(e))
        del self.groups[group.name]  # before waiting, so a repeated request finds it gone
        try:
            await asyncio.wait_for(self._collectives.run(group.destroy), LEAVE_TIMEOUT_S)
        except TimeoutError:
            return _failure(f"{endpoint}: left {group.name!r} without a clean exit: a collective of the group was still "
                            f"waiting for its peers after {LEAVE_TIMEOUT_S:g} s")
        return web.json_response({"success": True, "message": f"Left {group.name!r}."})

    async def update_weight_version(self, request: web.Request) -> web.Response:
        endpoint = "update_weight_version"
        try:
            fields = {"new_version": Field((str, int)), "abort_all_requests": Field(bool, True)}
            body = parse_body(await read_json(request, endpoint=endpoint), fields, endpoint=endpoint)
            version = parse_weight_version(body["new_version"], endpoint=endpoint, field="new_version")
        except BadRequest as e:
            return _failure(str(e))
        await self._abort_all(body["abort_all_requests"])
        async with self.gate.updating():
            error = await self._load([], version)
        if error:
            return _failure(error)
        return web.json_response({"success": True, "message": f"Weight version updated to {version}", "new_version": str(version)})

    def shutdown(self) -> None:
        """The server is stopping: requests waiting on a collective (a join, a broadcast) fail
        now with a message saying so, instead of holding the shutdown until their peers come."""
        self._collectives.fail_waiting(RuntimeError(SHUTTING_DOWN))

    async def aclose(self) -> None:
        """Leave every group (waiting at most ``LEAVE_TIMEOUT_S`` each: a collective thread still
        blocked on absent peers is abandoned) and stop the collective thread; safe to call twice."""
        self.shutdown()
        for group in list(self.groups.values()):
            try:
                await asyncio.wait_for(self._collectives.run(group.destroy), LEAVE_TIMEOUT_S)
            except TimeoutError:
                log.warning("could not leave weight update group %r within %.0fs (a collective is still waiting for its "
                            "peers); abandoning it", group.name, LEAVE_TIMEOUT_S)
        self.groups.clear()
        self._collectives.close()

    def _checked_disk_files(self, body: dict[str, Any]) -> list[Path]:
        """The safetensors files of ``model_path``, their names and shapes checked against the
        model (file system work: run it off the event loop)."""
        files = _disk_files(body)
        _check_shapes(self.policy, _disk_shapes(files), endpoint="update_weights_from_disk")
        return files

    def _check_init(self, body: dict[str, Any]) -> None:
        endpoint = "init_weights_update_group"
        if body["backend"] not in process_group.BACKENDS:
            raise BadRequest(f"{endpoint}: 'backend' must be one of {', '.join(process_group.BACKENDS)}, got {body['backend']!r}")
        if body["backend"] == "nccl" and _engine_device(self.policy).type != "cuda":
            raise BadRequest(f"{endpoint}: 'backend' 'nccl' needs the engine on a CUDA device (agentrl serve --device cuda); use 'gloo'")
        if body["world_size"] < 2 or not 1 <= body["rank_offset"] < body["world_size"]:
            raise BadRequest(f"{endpoint}: 'rank_offset' must lie in [1, world_size) and 'world_size' be >= 2, "
                             f"got rank_offset={body['rank_offset']}, world_size={body['world_size']}")
        if not 0 < body["master_port"] < 65536:
            raise BadRequest(f"{endpoint}: 'master_port' must lie in [1, 65535], got {body['master_port']}")
        if body["group_name"] in self.groups:
            raise BadRequest(f"{endpoint}: 'group_name' {body['group_name']!r} is already joined; destroy it first")

    def _group(self, name: str, *, endpoint: str) -> process_group.WeightUpdateGroup:
        if name not in self.groups:
            joined = ", ".join(map(repr, self.groups)) or "none"
            raise BadRequest(f"{endpoint}: 'group_name' {name!r} is not a joined weight update group (joined: {joined}); "
                             "call /init_weights_update_group first")
        return self.groups[name]

    async def _abort_all(self, requested: bool) -> None:
        """``abort_all_requests``: abort the requests in flight. A policy that cannot abort lets
        them finish first instead (the update waits for them either way)."""
        if requested and self.policy.can_abort:
            await abort_requests(self.policy, list(self.gate.in_flight))

    async def _receive_and_load(self, group: process_group.WeightUpdateGroup, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
                                version: int | None) -> str | None:
        """Receive every tensor (always: the sender is mid-collective), then load them; the
        error message, if any."""
        try:
            _check_shapes(self.policy, {name: shape for name, _, shape in specs}, endpoint="update_weights_from_distributed")
            refused = None
        except BadRequest as e:
            refused = str(e)
        device = _engine_device(self.policy) if group.backend == "nccl" else torch.device("cpu")
        try:
            tensors = await self._collectives.run(functools.partial(_receive, group, specs, device))
        except Exception as e:
            return f"update_weights_from_distributed: receiving from {group.name!r} failed: {e}"
        return refused or await self._load(zip([name for name, _, _ in specs], tensors), version)

    async def _load(self, named_tensors: Any, version: int | None) -> str | None:
        """Load into the policy; the error message, if any."""
        try:
            await self.policy.update_weights(named_tensors, weight_version=self.policy.weight_version if version is None else version)
        except (PolicyError, NotImplementedError) as e:
            return f"loading the weights failed: {e}"
        return None


def _disk_files(body: dict[str, Any]) -> list[Path]:
    endpoint = "update_weights_from_disk"
    if body["load_format"] not in DISK_FORMATS:
        raise BadRequest(f"{endpoint}: 'load_format' {body['load_format']!r} is not supported; only safetensors are loaded (omit it)")
    if body["is_async"] or body["manifest"] is not None:
        raise BadRequest(f"{endpoint}: 'is_async' and 'manifest' are not supported")
    try:
        return safetensors_files(Path(body["model_path"]))
    except ValueError as e:
        raise BadRequest(f"{endpoint}: 'model_path': {e}") from None


def _decoded_tensors(body: dict[str, Any]) -> list[tuple[str, torch.Tensor]]:
    endpoint = "update_weights_from_tensor"
    if body["load_format"] not in TENSOR_FORMATS:
        raise BadRequest(f"{endpoint}: 'load_format' must be 'flattened_bucket' or omitted, got {body['load_format']!r}")
    payloads = body["serialized_named_tensors"]
    if len(payloads) != 1:
        raise BadRequest(f"{endpoint}: 'serialized_named_tensors' has one entry per tensor-parallel rank; this server has 1, got {len(payloads)}")
    try:
        return decode(payloads[0], body["load_format"])
    except PayloadError as e:
        raise BadRequest(f"{endpoint}: 'serialized_named_tensors': {e}") from None


def _disk_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    try:
        return read_shapes(files)
    except Exception as e:
        raise BadRequest(f"update_weights_from_disk: 'model_path': cannot read a safetensors header: {e}") from None


def _tensor_specs(body: dict[str, Any]) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    endpoint = "update_weights_from_distributed"
    names, dtypes, shapes = body["names"], body["dtypes"], body["shapes"]
    if not len(names) == len(dtypes) == len(shapes):
        raise BadRequest(f"{endpoint}: 'names', 'dtypes' and 'shapes' must have one entry per tensor, got {len(names)}, {len(dtypes)}, {len(shapes)}")
    specs = []
    for name, dtype, shape in zip(names, dtypes, shapes):
        if not isinstance(name, str):
            raise BadRequest(f"{endpoint}: 'names' must be strings, got {name!r}")
        key = dtype.removeprefix("torch.") if isinstance(dtype, str) else dtype
        if key not in DTYPES:
            raise BadRequest(f"{endpoint}: 'dtypes' entry {dtype!r} for {name!r} is not one of {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise BadRequest(f"{endpoint}: 'shapes' entry for {name!r} must be a list of non-negative integers, got {shape!r}")
        specs.append((name, DTYPES[key], tuple(shape)))
    return specs


def _receive(group: process_group.WeightUpdateGroup, specs: list[tuple[str, torch.dtype, tuple[int, ...]]],
             device: torch.device) -> list[torch.Tensor]:
    tensors = [torch.empty(shape, dtype=dtype, device=device) for _, dtype, shape in specs]
    for tensor in tensors:
        group.broadcast(tensor)
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return tensors


def _check_shapes(policy: Policy, shapes: dict[str, tuple[int, ...]], *, endpoint: str) -> None:
    """Refuse names the policy's model lacks and shapes that differ (when it exposes a model)."""
    model = getattr(policy, "model", None)
    if not isinstance(model, nn.Module):
        return
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    unknown = [n for n in shapes if n not in expected]
    wrong = [f"{n} {list(s)} (model: {list(expected[n])})" for n, s in shapes.items() if n in expected and s != expected[n]]
    if unknown:
        raise BadRequest(f"{endpoint}: {len(unknown)} tensor names are not in the model, e.g. {', '.join(unknown[:3])} "
                         f"(expected Hugging Face names such as {next(iter(expected))})")
    if wrong:
        raise BadRequest(f"{endpoint}: {len(wrong)} tensors have the wrong shape: {'; '.join(wrong[:3])}")


def _engine_device(policy: Policy) -> torch.device:
    model = getattr(policy, "model", None)
    if isinstance(model, nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")


def _version_note(version: int | None) -> str:
    return "" if version is None else f" Weight version updated to {version}."


def _failure(message: str, **extra: int) -> web.Response:
    return web.json_response({"success": False, "message": message, **extra}, status=400)
