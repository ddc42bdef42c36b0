"""Weight sync: the one interface from the trainer to the inference engines.

Transports implement :class:`WeightSync`. Every push carries the new weight version, which the
engines stamp on every trajectory they produce from then on.

* :class:`EngineWeightSync` hands tensors to engines in this process (the embedded engine).
* :class:`DiskWeightSync` writes a safetensors directory and has each engine load it
  (``/update_weights_from_disk``): engines on this host or on a shared filesystem.
* :class:`DistributedWeightSync` broadcasts the tensors over a ``torch.distributed`` group of
  the trainer (rank 0) and the engines (``/init_weights_update_group``,
  ``/update_weights_from_distributed``): gloo through the CPU, NCCL between GPUs.
* :class:`TensorWeightSync` hands tensors to engines on the same node by handle (CUDA IPC on
  GPUs, shared memory on CPUs): ``/update_weights_from_tensor`` in SGLang's flattened-bucket
  format, which ``agentrl serve`` and SGLang both take (``--colocate``).

The HTTP transports speak SGLang's native API, so they drive ``agentrl serve`` and SGLang alike,
and wrap every push as slime does: ``/pause_generation`` (new requests wait; ``pause_mode``
decides what happens to those in flight), ``/flush_cache`` (retried while requests still run),
the transfer (its last request sets the version and flushes), ``/continue_generation``, and a
check that every engine's ``/get_weight_version`` reports the new version. With several
data-parallel trainer ranks, push from one rank only (the weights are the same on all).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import logging
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch

from agentrl.errors import PolicyError
from agentrl.policies.base import Policy
from agentrl.serving import process_group
from agentrl.serving.engine_client import EngineControlClient
from agentrl.serving.safetensors_dir import (
    WEIGHTS_FILE,
    unique_tensors,
    write_safetensors_dir,
)
from agentrl.serving.tensor_bucket import encode_bucket, sharing_by_file_name

NamedTensors = Iterable[tuple[str, torch.Tensor]]
log = logging.getLogger(__name__)


class WeightSyncError(PolicyError):
    """A push did not leave every engine on the new weights and version."""


class WeightSync(ABC):
    """Moves the trainer's weights (Hugging Face names) to every engine."""

    @abstractmethod
    async def push(self, named_tensors: NamedTensors, *, weight_version: int) -> None:
        """Load ``named_tensors`` into every engine and set their weight version. Returns when
        every engine serves the new weights; no request runs on a mix of versions."""


class EngineWeightSync(WeightSync):
    """Weight sync to engines in this process, through :meth:`Policy.update_weights`."""

    def __init__(self, engines: Sequence[Policy]) -> None:
        self.engines = list(engines)

    async def push(self, named_tensors: NamedTensors, *, weight_version: int) -> None:
        tensors = list(named_tensors)
        for engine in self.engines:
            await engine.update_weights(tensors, weight_version=weight_version)


@dataclass(frozen=True)
class PushStats:
    """What the last push moved: tensor bytes (tied weights once), transfer requests per
    engine, and the wall time of the whole push and of its parts, in seconds: ``prepare_s``
    (before the engines pause: casts, files, a group's setup), ``quiesce_s`` (pause and cache
    flush), ``transfer_s`` (the weights into every engine), ``resume_s`` (continue and the
    version check)."""

    bytes: int
    buckets: int
    seconds: float
    prepare_s: float = 0.0
    quiesce_s: float = 0.0
    transfer_s: float = 0.0
    resume_s: float = 0.0

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9


class HTTPWeightSync(WeightSync):
    """The push sequence shared by the HTTP transports (see the module docstring).

    Args:
        engine_urls: base URLs of the engines (not of a router: every engine must get the weights).
        pause_mode: SGLang's ``/pause_generation`` mode: ``"abort"`` ends requests in flight,
            ``"retract"`` / ``"in_place"`` keep them (``agentrl serve`` lets them finish first).
        flush_wait_s: how long ``/flush_cache`` may keep answering "requests still running".
        timeout_s: per-request HTTP limit.
    """

    def __init__(self, engine_urls: Sequence[str], *, pause_mode: str = "abort", flush_wait_s: float = 60.0, timeout_s: float = 300.0) -> None:
        if not engine_urls:
            raise ValueError("engine_urls is empty: give the base URL of every engine")
        self.engines = [EngineControlClient(url, timeout_s=timeout_s) for url in engine_urls]
        self.pause_mode, self.flush_wait_s = pause_mode, flush_wait_s
        self.last_push: PushStats | None = None

    async def push(self, named_tensors: NamedTensors, *, weight_version: int) -> None:
        """See :meth:`WeightSync.push`.

        Raises:
            EngineRequestError: an engine refused a step or could not be reached; engines are
                told to continue generating either way.
            WeightSyncError: an engine reports another version afterwards.
        """
        marks = [time.perf_counter()]
        prepared = await self._prepare(named_tensors)
        marks.append(time.perf_counter())
        try:
            await self._each(lambda engine: engine.pause(self.pause_mode))
            await self._each(lambda engine: engine.flush_cache(self.flush_wait_s))
            marks.append(time.perf_counter())
            nbytes, buckets = await self._transfer(prepared, str(weight_version))
            marks.append(time.perf_counter())
        finally:  # every engine is told to continue, even after a failure
            resumed = await asyncio.gather(*(engine.resume() for engine in self.engines), return_exceptions=True)
        for error in resumed:
            if isinstance(error, BaseException):
                raise error
        versions = await asyncio.gather(*(engine.weight_version() for engine in self.engines))
        stale = [f"{e.url} reports {v!r}" for e, v in zip(self.engines, versions) if v != str(weight_version)]
        if stale:
            raise WeightSyncError(f"after pushing weight version {weight_version}: {'; '.join(stale)}")
        marks.append(time.perf_counter())
        parts = [b - a for a, b in itertools.pairwise(marks)]
        self.last_push = PushStats(nbytes, buckets, marks[-1] - marks[0], *parts)

    async def aclose(self) -> None:
        """Close the HTTP clients; safe to call twice."""
        await asyncio.gather(*(engine.aclose() for engine in self.engines))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @abstractmethod
    async def _prepare(self, named_tensors: NamedTensors) -> Any:
        """Work done before pausing the engines (they keep generating meanwhile)."""

    @abstractmethod
    async def _transfer(self, prepared: Any, weight_version: str) -> tuple[int, int]:
        """Move the weights into every engine and set ``weight_version``; ``(bytes, requests)``."""

    async def _each(self, call: Callable[[EngineControlClient], Awaitable[Any]]) -> list[Any]:
        return list(await asyncio.gather(*(call(engine) for engine in self.engines)))


class DiskWeightSync(HTTPWeightSync):
    """Writes ``directory/model.safetensors`` (tied weights once, cast to ``dtype`` if given),
    then has every engine load it with ``/update_weights_from_disk``.

    ``directory`` belongs to this sync: each push replaces the file, and a directory holding
    other ``*.safetensors`` files is refused (an engine loads every one). Engines on other hosts
    need it on a shared filesystem. Other arguments: see :class:`HTTPWeightSync`.
    """

    def __init__(self, engine_urls: Sequence[str], directory: str | Path, *, dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        super().__init__(engine_urls, **kwargs)
        self.directory, self.dtype = Path(directory).resolve(), dtype
        foreign = sorted(p.name for p in self.directory.glob("*.safetensors") if p.name != WEIGHTS_FILE)
        if foreign:
            raise ValueError(f"{self.directory} holds other safetensors files ({', '.join(foreign)}), which engines would load too; "
                             "give DiskWeightSync a directory of its own")

    async def _prepare(self, named_tensors: NamedTensors) -> int:
        return await asyncio.to_thread(write_safetensors_dir, self.directory, named_tensors, dtype=self.dtype)

    async def _transfer(self, prepared: int, weight_version: str) -> tuple[int, int]:
        body = {"model_path": str(self.directory), "weight_version": weight_version, "flush_cache": True}
        await self._each(lambda engine: engine.call("POST", "/update_weights_from_disk", body))
        return prepared, 1


class DistributedWeightSync(HTTPWeightSync):
    """Broadcasts the weights over a ``torch.distributed`` group: trainer rank 0, engine ranks
    ``1..N`` (an engine with ``tp_size`` k takes k ranks).

    The group (see :mod:`agentrl.serving.process_group` for why it is a world of its own, apart
    from the trainer's default group) is made on the first push or by :meth:`connect`: the
    trainer creates it at ``master_address:master_port`` while each engine joins through
    ``/init_weights_update_group``. Each push sends the tensors in buckets of about
    ``bucket_bytes``: per bucket one ``/update_weights_from_distributed`` request per engine
    (names, dtypes, shapes) and one broadcast per tensor, in order. Collectives run on a thread
    of their own. :meth:`aclose` leaves the group on every side.

    Args:
        backend: ``"gloo"`` (tensors go through the CPU) or ``"nccl"`` (GPU to GPU; trainer
            tensors must be on CUDA, each engine on its own GPU: NCCL refuses two ranks on one).
        bucket_bytes: tensor bytes per request (a bigger tensor goes alone).
        dtype: cast to this dtype on the wire (e.g. ``torch.bfloat16`` from fp32 master
            weights); ``None`` sends each tensor's own dtype.
        master_address: an address of this host the engines can reach.
        master_port: the group's rendezvous port; ``None`` takes a free one.
        join_timeout_s: how long joining, and then each collective, may wait for the others.
        Other arguments: see :class:`HTTPWeightSync`.
    """

    def __init__(
        self, engine_urls: Sequence[str], *, backend: str = "gloo", bucket_bytes: int = 512 * 2**20,
        dtype: torch.dtype | None = None, master_address: str = "127.0.0.1", master_port: int | None = None,
        group_name: str = "weight_update_group", join_timeout_s: float = 600.0, **kwargs: Any,
    ) -> None:
        super().__init__(engine_urls, **kwargs)
        if backend not in process_group.BACKENDS:
            raise ValueError(f"backend must be one of {process_group.BACKENDS}, got {backend!r}")
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be >= 1, got {bucket_bytes}")
        self.backend, self.bucket_bytes, self.dtype = backend, bucket_bytes, dtype
        self.master_address, self.master_port, self.group_name = master_address, master_port, group_name
        self.join_timeout = datetime.timedelta(seconds=join_timeout_s)
        self.group: process_group.WeightUpdateGroup | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentrl-weight-sync")

    async def connect(self) -> None:
        """Create the group with every engine (no-op once connected).

        Raises:
            EngineRequestError: an engine could not join; the trainer's half of the rendezvous
                then fails after ``join_timeout_s``.
        """
        if self.group is not None:
            return
        infos = await self._each(lambda engine: engine.server_info())
        sizes = [int(info.get("tp_size", 1)) for info in infos]
        world_size, port = 1 + sum(sizes), self.master_port or _free_port(self.master_address)
        offsets = [1 + sum(sizes[:i]) for i in range(len(sizes))]
        loop = asyncio.get_running_loop()
        joined = loop.run_in_executor(self._executor, lambda: process_group.join(
            master_address=self.master_address, master_port=port, rank=0, world_size=world_size,
            group_name=self.group_name, backend=self.backend, timeout=self.join_timeout))
        body = {"master_address": self.master_address, "master_port": port, "world_size": world_size,
                "group_name": self.group_name, "backend": self.backend}
        try:
            await asyncio.gather(*(engine.call("POST", "/init_weights_update_group", body | {"rank_offset": offset}, idempotent=False)
                                   for engine, offset in zip(self.engines, offsets)))
        except Exception:
            joined.add_done_callback(_destroy_when_joined)
            raise
        self.group = await joined

    async def aclose(self) -> None:
        """Leave the group on every side, close the clients and the collective thread; safe twice."""
        group, self.group = self.group, None
        if group is not None:
            body = {"group_name": group.name}
            leave = asyncio.get_running_loop().run_in_executor(self._executor, group.destroy)
            left = await asyncio.gather(leave, *(engine.request("POST", "/destroy_weights_update_group", body) for engine in self.engines),
                                        return_exceptions=True)
            for where, outcome in zip(["trainer", *(engine.url for engine in self.engines)], left):
                if isinstance(outcome, BaseException):
                    log.warning("leaving weight update group %r on %s failed: %r", group.name, where, outcome)
        self._executor.shutdown(wait=False, cancel_futures=True)
        await super().aclose()

    async def _prepare(self, named_tensors: NamedTensors) -> list[list[tuple[str, torch.Tensor]]]:
        await self.connect()
        buckets = _buckets(unique_tensors(named_tensors), self.bucket_bytes, self.dtype)
        if not buckets:
            raise ValueError("named_tensors is empty: nothing to push")
        return buckets

    async def _transfer(self, prepared: list[list[tuple[str, torch.Tensor]]], weight_version: str) -> tuple[int, int]:
        assert self.group is not None
        loop, nbytes = asyncio.get_running_loop(), 0
        for i, bucket in enumerate(prepared):
            last = i == len(prepared) - 1
            body = {"names": [name for name, _ in bucket], "dtypes": [_dtype_name(self.dtype or t.dtype) for _, t in bucket],
                    "shapes": [list(t.shape) for _, t in bucket], "group_name": self.group.name,
                    "flush_cache": last, "weight_version": weight_version if last else None}
            send = loop.run_in_executor(self._executor, self._send, bucket)
            await asyncio.gather(send, *(engine.call("POST", "/update_weights_from_distributed", body, idempotent=False)
                                         for engine in self.engines))
            nbytes += sum(t.numel() * (self.dtype or t.dtype).itemsize for _, t in bucket)
        return nbytes, len(prepared)

    def _send(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        assert self.group is not None
        for _, tensor in bucket:
            device = torch.device("cpu") if self.backend == "gloo" else tensor.device if tensor.is_cuda else torch.device("cuda")
            self.group.broadcast(tensor.detach().to(device=device, dtype=self.dtype).contiguous())
        if self.backend == "nccl":
            torch.cuda.synchronize()


class TensorWeightSync(HTTPWeightSync):
    """Engines on this node (``--colocate``): each bucket of tensors is flattened and sent as
    handles to ``/update_weights_from_tensor`` with ``load_format="flattened_bucket"``
    (:mod:`agentrl.serving.tensor_bucket`: SGLang's format, with SGLang's own classes when it is
    installed); the engines map the memory (CUDA IPC on GPUs, shared memory on CPUs), so only
    metadata crosses HTTP and the tensors stay alive here until every engine has answered.
    ``agentrl serve`` and SGLang both take it.

    Args:
        tp_size: tensor-parallel ranks per engine (the payload has one entry per rank).
        device: where the tensors are shared from: ``cuda`` (CUDA IPC) or ``cpu`` (shared memory files).
        bucket_bytes, dtype: as :class:`DistributedWeightSync`.
        Other arguments: see :class:`HTTPWeightSync`.
    """

    def __init__(self, engine_urls: Sequence[str], *, tp_size: int = 1, device: str = "cuda", bucket_bytes: int = 512 * 2**20,
                 dtype: torch.dtype | None = None, **kwargs: Any) -> None:
        super().__init__(engine_urls, **kwargs)
        self.tp_size, self.device, self.bucket_bytes, self.dtype = tp_size, torch.device(device), bucket_bytes, dtype

    async def _prepare(self, named_tensors: NamedTensors) -> list[list[tuple[str, torch.Tensor]]]:
        tensors = [(name, t.detach().to(device=self.device, dtype=self.dtype or t.dtype).contiguous())
                   for name, t in unique_tensors(named_tensors)]
        return _buckets(tensors, self.bucket_bytes, None)

    async def _transfer(self, prepared: list[list[tuple[str, torch.Tensor]]], weight_version: str) -> tuple[int, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for i, bucket in enumerate(prepared):
            payload = await asyncio.to_thread(_encode, bucket, self.device)
            last = i == len(prepared) - 1
            body = {"serialized_named_tensors": [payload] * self.tp_size, "load_format": "flattened_bucket",
                    "flush_cache": last, "weight_version": weight_version if last else None}
            await self._each(functools.partial(_post, path="/update_weights_from_tensor", body=body))
        return sum(t.numel() * t.element_size() for bucket in prepared for _, t in bucket), len(prepared)


def _encode(bucket: list[tuple[str, torch.Tensor]], device: torch.device) -> str:
    """One bucket's payload: CUDA tensors by IPC handle, CPU tensors by file name."""
    if device.type == "cuda":
        return encode_bucket(bucket)
    with sharing_by_file_name():
        return encode_bucket(bucket)


def _buckets(named_tensors: NamedTensors, bucket_bytes: int, dtype: torch.dtype | None) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive tensors in groups of about ``bucket_bytes`` (as sent, in ``dtype``)."""
    buckets: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * (dtype or tensor.dtype).itemsize
        if buckets[-1] and size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append((name, tensor))
        size += nbytes
    return buckets if buckets[0] else []


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _destroy_when_joined(future: Any) -> None:
    """The trainer's half of a failed rendezvous: leave the group if it formed after all."""
    if not future.cancelled() and future.exception() is None:
        future.result().destroy()


async def _post(engine: EngineControlClient, *, path: str, body: dict[str, Any]) -> Any:
    """A one-off POST to one engine (not retried: weight updates are not idempotent)."""
    return await engine.call("POST", path, body, idempotent=False)
