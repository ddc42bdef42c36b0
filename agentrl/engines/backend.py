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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from agentrl.engines.fleet import EngineFleet, FleetEvent
from agentrl.engines.launch import Engine, EngineSpec
from agentrl.engines.pusher import FleetView, PushConfig, WeightPusher
from agentrl.engines.router import RouterSpec
from agentrl.engines.weight_sync import EngineWeightSync, NamedTensors
from agentrl.policies.base import Policy
from agentrl.policies.embedded import DTYPES, EmbeddedEngine
from agentrl.policies.sglang import SGLangPolicy
from agentrl.serving.sglang_api import SGLangServer


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
    """What the rollout side uses: ``policy`` to sample, ``push`` to update every engine,
    ``api_url`` (SGLang's native API over the engines, or ``None``) for slime generate functions,
    and ``fleet`` (engines over HTTP only) for a pusher in another process."""

    policy: Policy
    push: Callable[[NamedTensors, int], Any]
    api_url: str | None
    fleet: FleetView | None = None
    raise_if_failed: Callable[[], None] = lambda: None
    """Raises the engines' failure (:meth:`EngineFleet.raise_if_failed`); the embedded engine has none to raise."""


RestartHook = Callable[[str, str], Awaitable[None]]
"""Gives the relaunched engine at URL (named NAME) the latest weights before it rejoins."""

EngineFactory = Callable[[int, EngineSpec, Path], Engine]
"""Builds launched engine ``i`` of the fleet from its spec, logging under the given directory
(the Ray launcher places each on its bundles); the default launches a local process."""


@contextlib.asynccontextmanager
async def open_backend(cfg: BackendConfig, model_dir: Path, tokenizer: PreTrainedTokenizerBase, run_dir: Path, *,
                       serve_api: bool = False, engine_factory: EngineFactory | None = None,
                       restart_hook: RestartHook | None = None) -> AsyncIterator[RolloutBackend]:
    """Start the backend ``cfg`` names; stop everything it started on exit (also on errors).

    ``engine_factory`` builds the launched engines (default: local processes); ``restart_hook``
    (with engines) means the weights are pushed from another process through
    :attr:`RolloutBackend.fleet`, and gives relaunched engines their weights.
    """
    if not cfg.remote:
        async with _embedded(cfg, model_dir, tokenizer, serve_api) as backend:
            yield backend
        return
    async with (
        _Engines(cfg, model_dir, run_dir, engine_factory, restart_hook) as engines,
        SGLangPolicy(engines.fleet.router_url or engines.fleet.urls, max_concurrency=cfg.concurrency) as policy,
    ):
        yield RolloutBackend(policy, engines.push, engines.fleet.router_url, engines, engines.fleet.raise_if_failed)


@contextlib.asynccontextmanager
async def _embedded(cfg: BackendConfig, model_dir: Path, tokenizer: PreTrainedTokenizerBase, serve_api: bool) -> AsyncIterator[RolloutBackend]:
    model = await asyncio.to_thread(AutoModelForCausalLM.from_pretrained, model_dir, dtype=DTYPES[cfg.dtype])
    engine = EmbeddedEngine(model, tokenizer, max_batch_size=cfg.concurrency, device=cfg.device, seed=cfg.seed)
    sync = EngineWeightSync([engine])
    async with engine, contextlib.AsyncExitStack() as stack:
        url = None
        if serve_api:
            server = await stack.enter_async_context(SGLangServer(engine, tokenizer, model_path=str(model_dir)))
            url = f"http://{server.host}:{server.port}"
        yield RolloutBackend(engine, lambda tensors, version: sync.push(tensors, weight_version=version), url)


class _Engines:
    """The fleet, seen by a :class:`~agentrl.engines.pusher.WeightPusher` as a
    :class:`~agentrl.engines.pusher.FleetView`. With ``restart_hook`` ``None`` the pusher is this
    process's own (:attr:`pusher`); else the weights are elsewhere (a Ray trainer rank) and the
    hook gives a relaunched engine the latest weights."""

    def __init__(self, cfg: BackendConfig, model_dir: Path, run_dir: Path, engine_factory: EngineFactory | None = None,
                 restart_hook: RestartHook | None = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir / "engines"
        args = {"dtype": cfg.dtype, "device": cfg.device, **cfg.engine_args}
        specs = [EngineSpec(str(model_dir), backend=cfg.engine_backend, server_args=args) for _ in range(cfg.num_engines)]
        launched: list[EngineSpec | Engine] = [engine_factory(i, spec, self.run_dir) for i, spec in enumerate(specs)] if engine_factory else list(specs)
        self.fleet = EngineFleet([*launched, *cfg.engine_urls], self.run_dir, router=RouterSpec(cfg.router_args), on_event=self._on_event)
        self.epoch = 0
        self.changed = asyncio.Condition()
        self.pusher = None if restart_hook else WeightPusher(self, push_config(cfg, self.run_dir))
        self.restart_hook: RestartHook = restart_hook or self.pusher.push_latest_to  # type: ignore[union-attr]
        self._holds = contextlib.ExitStack()

    async def __aenter__(self) -> _Engines:
        await self.fleet.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self.pusher is not None:
                await self.pusher.aclose()
        finally:
            await self.fleet.__aexit__(*exc)

    async def push(self, named_tensors: NamedTensors, weight_version: int) -> None:
        """See :meth:`WeightPusher.push`."""
        assert self.pusher is not None, "the weights are pushed from another process"
        await self.pusher.push(named_tensors, weight_version)

    # ------------------------------------------------------------------ FleetView
    async def engine_urls(self) -> tuple[list[str], int]:
        """The engines in service and the epoch; a relaunched engine rejoins just after the
        restart hook, so an empty fleet is waited for (up to the router's timeout) before answering.
        A failed fleet raises its failure instead."""
        deadline = time.monotonic() + self.fleet.config.router_timeout_s
        while not self.fleet.urls and time.monotonic() < deadline:  # polled: the fleet sets no event on a rejoin
            self.fleet.raise_if_failed()
            await asyncio.sleep(0.1)
        self.fleet.raise_if_failed()
        return self.fleet.urls, self.epoch

    async def hold_checks(self, hold: bool) -> None:
        if hold:
            self._holds.enter_context(self.fleet.checks_held())
        else:
            self._holds.close()

    async def wait_for_change(self, epoch: int) -> bool:
        fleet = self.fleet.config
        limit = fleet.interval_s * (fleet.failures_to_dead + 1) + fleet.probe_timeout_s + fleet.start_timeout_s + fleet.router_timeout_s
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.epoch > epoch), timeout=limit)
            except TimeoutError:
                return False
        return True

    async def _on_event(self, event: FleetEvent) -> None:
        """A relaunched engine loads the latest weights before it serves; any change of the
        fleet makes the next push rebuild its transport over the engines in service."""
        if event.kind == "restarted":
            await self.restart_hook(event.url, event.engine)
        async with self.changed:
            self.epoch += 1
            self.changed.notify_all()


def push_config(cfg: BackendConfig, run_dir: Path, master_address: str = "127.0.0.1", *, colocated: bool = False) -> PushConfig:
    """How weights travel to the engines of ``cfg`` (weight files under ``run_dir``): by handle
    (CUDA IPC) to engines that share the trainer's GPUs, else by ``--weight-sync``."""
    method = "tensor" if colocated else cfg.weight_sync
    return PushConfig(method, cfg.device, torch.bfloat16 if cfg.bf16 else None, run_dir / "weights", master_address)
