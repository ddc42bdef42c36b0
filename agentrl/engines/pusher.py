"""Pushing the trainer's weights to a fleet of engines whose members can die and come back.

A :class:`WeightPusher` lives where the weights are (the trainer's process, or trainer rank 0's
Ray actor) and reaches the engines through a :class:`FleetView`: the fleet itself in the same
process, or the Ray rollout manager's fleet over actor calls. Each push:

* keeps a CPU snapshot of what it pushes (an engine relaunched later must get exactly that
  version, not a torn mix of it and the weights the trainer has moved on to);
* sends the weights with the transport ``--weight-sync`` names (see
  :mod:`agentrl.engines.weight_sync`) while the fleet's health checks are held (engines hold
  requests while they load);
* on an engine that cannot be reached (it died since the last health check), waits, bounded,
  until the fleet has relaunched or dropped it, then pushes again over the engines in service.

:meth:`WeightPusher.push_latest_to` gives a relaunched engine the last snapshot (from disk)
before it rejoins the router.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from agentrl.engines.weight_sync import DiskWeightSync, DistributedWeightSync, HTTPWeightSync, NamedTensors, TensorWeightSync
from agentrl.serving.engine_client import EngineRequestError

log = logging.getLogger(__name__)
PUSH_ATTEMPTS = 3


class FleetView(Protocol):
    """The engines in service, as a pusher sees them."""

    async def engine_urls(self) -> tuple[list[str], int]:
        """The URLs of the engines in service and the fleet's epoch (bumped by every restart or drop)."""

    async def hold_checks(self, hold: bool) -> None:
        """Start (``True``) or end (``False``) a stretch in which failed health probes do not
        count: engines hold requests, ``/health_generate`` included, while weights load."""

    async def wait_for_change(self, epoch: int) -> bool:
        """Wait, bounded by the fleet's detection and restart time, until its epoch passes
        ``epoch``; whether it did."""


@dataclass(frozen=True)
class PushConfig:
    """How weights travel.

    Attributes:
        method: ``"distributed"`` (a ``torch.distributed`` group: NCCL on GPUs, gloo on CPUs),
            ``"disk"`` (a safetensors directory and ``/update_weights_from_disk``), or ``"tensor"``
            (handles to engines on this node: CUDA IPC, or shared memory on CPUs; ``--colocate``).
        device: the trainer's device (``cpu`` or ``cuda[:N]``): picks gloo or NCCL.
        wire_dtype: the dtype on the wire (``None``: each tensor's own).
        weights_dir: where disk pushes (and relaunched engines' weights) are written; engines on
            other hosts need it on a shared filesystem.
        master_address: an address of the pushing host that the engines reach (the group's
            rendezvous for ``distributed``).
    """

    method: str
    device: str
    wire_dtype: torch.dtype | None
    weights_dir: Path
    master_address: str = "127.0.0.1"


class Snapshot:
    """The last pushed weights, copied to host memory that is kept from push to push (pinned when
    the weights are on a GPU): the cast runs where the tensor is, the copy is asynchronous, and
    no buffer is allocated after the first push (a 0.6 B model: ~60 ms, against ~1.2 s for fresh
    pageable copies on an H100)."""

    def __init__(self) -> None:
        self.tensors: list[tuple[str, torch.Tensor]] = []
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, named_tensors: list[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> None:
        """Copy ``named_tensors`` (cast to ``dtype`` when given). Blocking: call it through
        ``asyncio.to_thread``; nothing may change the tensors until it returns."""
        taken, on_gpu = [], False
        for name, tensor in named_tensors:
            source = tensor.detach().to(dtype or tensor.dtype)
            buffer = self._buffers.get(name)
            if buffer is None or buffer.shape != source.shape or buffer.dtype != source.dtype:
                buffer = self._buffers[name] = torch.empty(source.shape, dtype=source.dtype, pin_memory=source.is_cuda)
            buffer.copy_(source, non_blocking=source.is_cuda)
            on_gpu |= source.is_cuda
            taken.append((name, buffer))
        if on_gpu:
            torch.cuda.synchronize()
        self.tensors = taken


class WeightPusher:
    """See the module docstring.

    Args:
        view: the fleet the engines belong to.
        config: the transport.
    """

    def __init__(self, view: FleetView, config: PushConfig) -> None:
        self.view, self.config = view, config
        self.latest = Snapshot()
        self.latest_version: int | None = None  # of the snapshot; None before the first push
        self._snapshot_lock = asyncio.Lock()  # a relaunched engine never reads a snapshot being taken
        self._sync: HTTPWeightSync | None = None
        self._epoch = -1  # the fleet epoch the transport was built for

    async def push(self, named_tensors: NamedTensors, weight_version: int) -> None:
        """Every engine in service loads the weights and reports ``weight_version``.

        Raises:
            EngineRequestError: the push failed ``PUSH_ATTEMPTS`` times, or the fleet did not
                change within its detection and restart time after a failure.
        """
        tensors = [(name, t.detach()) for name, t in named_tensors]
        async with self._snapshot_lock:
            await asyncio.to_thread(self.latest.take, tensors, self.config.wire_dtype)
            self.latest_version = weight_version
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            urls, epoch = await self.view.engine_urls()
            await self.view.hold_checks(True)
            try:
                if not urls:
                    raise EngineRequestError("no engine is in service (one may be relaunching)")
                if epoch != self._epoch:
                    await self._drop_sync()
                    self._sync, self._epoch = self._transport(urls), epoch
                assert self._sync is not None
                await self._sync.push(tensors, weight_version=weight_version)
                return
            except EngineRequestError as e:
                if attempt == PUSH_ATTEMPTS:
                    raise
                log.warning("weight push %d/%d failed (%s); waiting for the fleet to restart or drop the engine", attempt, PUSH_ATTEMPTS, e)
                await self._drop_sync()
                if not await self.view.wait_for_change(epoch):
                    raise EngineRequestError(f"{e}; and no engine was restarted or dropped within the fleet's restart time") from e
            finally:
                await self.view.hold_checks(False)

    async def push_latest_to(self, url: str, engine: str) -> None:
        """Load the last pushed weights into the (relaunched) engine at ``url``, from disk; nothing
        before the first push (it serves the checkpoint's weights then)."""
        async with self._snapshot_lock:
            if self.latest_version is None:
                return
            log.warning("engine %s (%s) relaunched: loading weight version %d before it rejoins", engine, url, self.latest_version)
            one = DiskWeightSync([url], self.config.weights_dir.parent / f"weights-{engine}", dtype=self.config.wire_dtype)
            try:
                await one.push(self.latest.tensors, weight_version=self.latest_version)
            finally:
                await one.aclose()

    async def aclose(self) -> None:
        """Leave the transport (its process group, its HTTP clients); safe to call twice."""
        await self._drop_sync()

    def _transport(self, urls: list[str]) -> HTTPWeightSync:
        cfg = self.config
        if cfg.method == "disk":
            return DiskWeightSync(urls, cfg.weights_dir, dtype=cfg.wire_dtype)
        if cfg.method == "tensor":
            return TensorWeightSync(urls, device="cuda" if cfg.device.startswith("cuda") else "cpu", dtype=cfg.wire_dtype)
        backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
        return DistributedWeightSync(urls, backend=backend, dtype=cfg.wire_dtype, master_address=cfg.master_address)

    async def _drop_sync(self) -> None:
        sync, self._sync, self._epoch = self._sync, None, -1
        if sync is not None:
            await sync.aclose()
