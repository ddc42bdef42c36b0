"""Where the training loop samples and where its weights go: the rollout backend.

* **Embedded** (the default): an :class:`~agentrl.policies.embedded.EmbeddedEngine` in this
  process; weights are handed over in memory. With ``serve_api`` it is also served over SGLang's
  native HTTP API (for slime generate functions).
* **Engines over HTTP**: ``--rollout-num-engines N`` launches N engines (``agentrl serve``, or
  SGLang with ``--rollout-engine-backend sglang``; ``--sglang-*`` options pass through) and
  ``--rollout-engine-urls`` attaches running ones; all sit behind an sglang-router this process
  starts (``--router-*`` options pass through) and kept healthy by an
  :class:`~agentrl.engines.fleet.EngineFleet`. The runner samples through
  :class:`~agentrl.policies.sglang.SGLangPolicy` at the router; weights go to every engine by
  ``--weight-sync distributed`` (a ``torch.distributed`` group: NCCL on GPU, gloo on CPU) or
  ``disk`` (a safetensors directory and ``/update_weights_from_disk``).

A relaunched engine gets the latest pushed weights (from disk) before it rejoins the router; an
engine that restarts or is dropped makes the next push rebuild the transport over the engines in
service then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from agentrl.engines.fleet import EngineFleet, FleetEvent
from agentrl.engines.launch import EngineSpec
from agentrl.engines.router import RouterSpec
from agentrl.policies.base import Policy
from agentrl.policies.embedded import DTYPES, EmbeddedEngine
from agentrl.policies.sglang import SGLangPolicy
from agentrl.serving.engine_client import EngineRequestError
from agentrl.serving.sglang_api import SGLangServer
from agentrl.trainers.weight_sync import DiskWeightSync, DistributedWeightSync, EngineWeightSync, HTTPWeightSync, NamedTensors

log = logging.getLogger(__name__)
PUSH_ATTEMPTS = 3


@dataclass(frozen=True)
class BackendConfig:
    """The rollout backend's part of the training config.

    Attributes:
        num_engines: engines to launch; with ``engine_urls`` empty too, the embedded engine.
        engine_urls: running SGLang-compatible engines to attach (``http://host:port``).
        engine_backend: what launched engines run: ``"agentrl"`` (``agentrl serve``) or ``"sglang"``.
        engine_args: the engines' own options (SGLang's names), from ``--sglang-*``.
        router_args: sglang-router's own options, from ``--router-*``.
        weight_sync: ``"distributed"`` or ``"disk"`` (engines over HTTP only).
        device, bf16, concurrency, seed: as in the training config.
    """

    num_engines: int = 0
    engine_urls: tuple[str, ...] = ()
    engine_backend: str = "agentrl"
    engine_args: dict[str, Any] = field(default_factory=dict)
    router_args: dict[str, Any] = field(default_factory=dict)
    weight_sync: str = "distributed"
    device: str = "cpu"
    bf16: bool = True
    concurrency: int = 256
    seed: int = 0

    @property
    def remote(self) -> bool:
        return self.num_engines > 0 or bool(self.engine_urls)

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


@dataclass
class RolloutBackend:
    """What the loop uses: ``policy`` to sample, ``push`` to update every engine, ``api_url``
    (SGLang's native API over the engines, or ``None``) for slime generate functions."""

    policy: Policy
    push: Callable[[NamedTensors, int], Any]
    api_url: str | None


@contextlib.asynccontextmanager
async def open_backend(cfg: BackendConfig, model_dir: Path, tokenizer: PreTrainedTokenizerBase, run_dir: Path, *,
                       serve_api: bool = False) -> AsyncIterator[RolloutBackend]:
    """Start the backend ``cfg`` names; stop everything it started on exit (also on errors)."""
    if not cfg.remote:
        async with _embedded(cfg, model_dir, tokenizer, serve_api) as backend:
            yield backend
        return
    async with _Engines(cfg, model_dir, run_dir) as engines, SGLangPolicy(engines.fleet.router_url or engines.fleet.urls, max_concurrency=cfg.concurrency) as policy:
        yield RolloutBackend(policy, engines.push, engines.fleet.router_url)


@contextlib.asynccontextmanager
async def _embedded(cfg: BackendConfig, model_dir: Path, tokenizer: PreTrainedTokenizerBase, serve_api: bool) -> AsyncIterator[RolloutBackend]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[cfg.dtype])
    engine = EmbeddedEngine(model, tokenizer, max_batch_size=cfg.concurrency, device=cfg.device, seed=cfg.seed)
    sync = EngineWeightSync([engine])
    async with engine, contextlib.AsyncExitStack() as stack:
        url = None
        if serve_api:
            server = await stack.enter_async_context(SGLangServer(engine, tokenizer, model_path=str(model_dir)))
            url = f"http://{server.host}:{server.port}"
        yield RolloutBackend(engine, lambda tensors, version: sync.push(tensors, weight_version=version), url)


def snapshot(named_tensors: list[tuple[str, torch.Tensor]], dtype: torch.dtype | None) -> list[tuple[str, torch.Tensor]]:
    """Copies of the tensors on the CPU (in ``dtype`` when given): the trainer goes on updating its
    parameters in place, and an engine restarted later must get exactly the pushed version, not
    a torn mix of it and the next. Blocking: call it through ``asyncio.to_thread``."""
    return [(name, t.detach().to("cpu", dtype=dtype or t.dtype, copy=True)) for name, t in named_tensors]


class _Engines:
    """The fleet and the weight transport over its engines, rebuilt after the fleet changes."""

    def __init__(self, cfg: BackendConfig, model_dir: Path, run_dir: Path) -> None:
        self.cfg, self.run_dir = cfg, run_dir / "engines"
        args = {"dtype": cfg.dtype, "device": cfg.device, **cfg.engine_args}
        specs = [EngineSpec(str(model_dir), backend=cfg.engine_backend, server_args=args) for _ in range(cfg.num_engines)]
        self.fleet = EngineFleet([*specs, *cfg.engine_urls], self.run_dir, router=RouterSpec(cfg.router_args), on_event=self._on_event)
        self.sync: HTTPWeightSync | None = None
        self.stale = False  # the fleet changed since the transport was built
        self.changed = asyncio.Event()
        self.latest: tuple[list[tuple[str, torch.Tensor]], int] | None = None  # a snapshot: see snapshot()

    async def __aenter__(self) -> _Engines:
        await self.fleet.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._drop_sync()
        finally:
            await self.fleet.__aexit__(*exc)

    async def push(self, named_tensors: NamedTensors, weight_version: int) -> None:
        """Every engine in service loads the weights and reports ``weight_version``. An engine
        that cannot be reached (it died since the last health check) makes the push wait until
        the fleet has restarted or dropped it, then push again to the engines in service.

        Raises:
            EngineRequestError: the push failed ``PUSH_ATTEMPTS`` times, or the fleet did not
                change within its detection and restart time after a failure.
        """
        tensors = [(name, t.detach()) for name, t in named_tensors]
        self.latest = (await asyncio.to_thread(snapshot, tensors, self._wire_dtype), weight_version)
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            if self.stale:
                await self._drop_sync()
            if self.sync is None:
                self.sync, self.stale = self._transport(self.fleet.urls), False
            self.changed.clear()
            try:
                with self.fleet.checks_held():
                    await self.sync.push(tensors, weight_version=weight_version)
                return
            except EngineRequestError as e:
                if attempt == PUSH_ATTEMPTS:
                    raise
                log.warning("weight push %d/%d failed (%s); waiting for the fleet to restart or drop the engine", attempt, PUSH_ATTEMPTS, e)
                self.stale = True
                await self._wait_for_change(e)

    async def _wait_for_change(self, error: EngineRequestError) -> None:
        fleet = self.fleet.config
        limit = fleet.interval_s * (fleet.failures_to_dead + 1) + fleet.probe_timeout_s + fleet.start_timeout_s + fleet.router_timeout_s
        try:
            await asyncio.wait_for(self.changed.wait(), timeout=limit)
        except TimeoutError:
            raise EngineRequestError(f"{error}; and no engine was restarted or dropped within {limit:.0f} s") from error

    @property
    def _wire_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.cfg.bf16 else None

    def _transport(self, urls: list[str]) -> HTTPWeightSync:
        wire = self._wire_dtype
        if self.cfg.weight_sync == "disk":
            return DiskWeightSync(urls, self.run_dir / "weights", dtype=wire)
        backend = "nccl" if self.cfg.device.startswith("cuda") else "gloo"
        return DistributedWeightSync(urls, backend=backend, dtype=wire)

    async def _on_event(self, event: FleetEvent) -> None:
        """A relaunched engine loads the latest weights before it serves; any change of the
        fleet makes the next push rebuild its transport over the engines in service."""
        self.stale = True
        self.changed.set()
        if event.kind == "restarted" and self.latest is not None:
            tensors, version = self.latest
            log.warning("engine %s restarted (%s): loading weight version %d before it rejoins", event.engine, event.reason, version)
            one = DiskWeightSync([event.url], self.run_dir / f"weights-{event.engine}", dtype=self._wire_dtype)
            try:
                await one.push(tensors, weight_version=version)
            finally:
                await one.aclose()

    async def _drop_sync(self) -> None:
        sync, self.sync = self.sync, None
        if sync is not None:
            await sync.aclose()
