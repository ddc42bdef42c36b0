"""The Ray actors of a training run: one per trainer rank, and one rollout manager.

* :class:`TrainerActor` (one per rank, on its bundle): the ``--train-backend`` trainer in a
  ``torch.distributed`` group of all ranks (NCCL on GPUs, gloo on CPUs), training its share of
  each rollout; rank 0 also writes checkpoints and exports, and pushes the weights to the engines
  (a :class:`~agentrl.engines.pusher.WeightPusher` over the manager's fleet).
* :class:`RolloutManagerActor` (CPU only, on the driver's node): a
  :class:`~agentrl.rollout.manager.RolloutManager` whose engines are
  :class:`~agentrl.launch.ray_engines.ActorEngine` actors on their bundles, behind sglang-router.

Both are async actors: their blocking work (training steps, checkpoint files) runs in threads, so
each keeps answering calls (a weight push, a relaunched engine's weights) meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]  # re-exported from torch._C without __all__

from agentrl.checkpoint import LoopState, restore_checkpoint, save_checkpoint
from agentrl.engines.backend import push_config
from agentrl.engines.launch import Engine, EngineSpec
from agentrl.engines.pusher import FleetView, WeightPusher
from agentrl.launch.placement import Placement
from agentrl.launch.ray_engines import ActorEngine
from agentrl.rollout.manager import RolloutManager
from agentrl.trainers.base import Trainer
from agentrl.trainers.batching import TrainSequence
from agentrl.trainers.build import build_trainer

if TYPE_CHECKING:
    from agentrl.config import TrainConfig

GROUP_TIMEOUT = datetime.timedelta(minutes=30)
"""How long a rank waits for the others in ``init_process_group`` and in each collective."""


def node_address() -> str:
    """This node's address as Ray knows it (other nodes reach it there)."""
    import ray

    address: str = ray.util.get_node_ip_address()
    return address


class TrainerActor:
    """Trainer rank ``rank`` of ``world_size`` (see the module docstring)."""

    def __init__(self, rank: int, world_size: int, cfg: TrainConfig, model_dir: str, run_dir: str) -> None:
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.model_dir, self.run_dir = Path(model_dir), Path(run_dir)
        self.trainer: Trainer | None = None
        self.pusher: WeightPusher | None = None
        self._store: TCPStore | None = None  # rank 0's, from open_rendezvous

    async def open_rendezvous(self) -> tuple[str, int]:
        """Rank 0: open the group's store on a port the OS picks and return its address. The store
        listens before anyone learns the port, so no other process can take it in between (a port
        found free and bound later could be, by any of Ray's connections)."""
        host = node_address()
        store = await asyncio.to_thread(TCPStore, host, 0, self.world_size, True, GROUP_TIMEOUT, wait_for_workers=False)
        self._store = store
        return host, int(store.port)

    async def setup(self, master_address: str, master_port: int) -> int:
        """Join the ranks' process group (rank 0's store at ``master_address:master_port``) and load
        the model; returns this process's pid."""
        if not self.cfg.device.startswith("cuda"):
            torch.set_num_threads(self.cfg.actor_num_cpus_per_rank)
        backend = "nccl" if self.cfg.device.startswith("cuda") else "gloo"
        store = self._store or await asyncio.to_thread(TCPStore, master_address, master_port, self.world_size, False, GROUP_TIMEOUT)
        await asyncio.to_thread(dist.init_process_group, backend, store=store, rank=self.rank, world_size=self.world_size, timeout=GROUP_TIMEOUT)
        cfg = self.cfg
        self.trainer = await asyncio.to_thread(build_trainer, cfg.train_backend, self.model_dir, cfg.trainer(), cfg.loss(), device=cfg.device,
                                               megatron=cfg.megatron(), seed=cfg.seed)
        return os.getpid()

    async def train(self, sequences: list[TrainSequence], num_samples: int) -> dict[str, float]:
        """This rank's share of one rollout's optimizer steps (collectives with the other ranks)."""
        return await asyncio.to_thread(self._trainer.train_rollout, sequences, num_samples)

    async def save(self, root: str, state: LoopState) -> str:
        """Write the checkpoint (the ranks hold the same weights and optimizer state)."""
        return str(await asyncio.to_thread(save_checkpoint, root, state, self._trainer.state_dict()))

    async def load(self, checkpoint: str) -> LoopState:
        return await asyncio.to_thread(restore_checkpoint, checkpoint, self._trainer.load_state_dict)

    async def export_hf(self, path: str) -> None:
        await asyncio.to_thread(self._trainer.save_hf, path)

    # ------------------------------------------------------------------ rank 0: the weights' way to the engines
    async def connect_engines(self, manager: Any) -> None:
        """Push weights through ``manager``'s fleet from now on (rank 0)."""
        config = push_config(self.cfg.backend(), self.run_dir / "engines", master_address=node_address(), colocated=self.cfg.colocate)
        self.pusher = WeightPusher(_ManagerFleetView(manager, self.cfg.actor_call_timeout), config)

    async def push_weights(self, weight_version: int) -> None:
        """Every engine loads this rank's weights as ``weight_version`` (rank 0)."""
        assert self.pusher is not None, "connect_engines() first"
        await self.pusher.push(self._trainer.named_weights(), weight_version)

    async def push_latest_to(self, url: str, engine: str) -> None:
        """The relaunched engine at ``url`` loads the last pushed weights (rank 0)."""
        assert self.pusher is not None, "connect_engines() first"
        await self.pusher.push_latest_to(url, engine)

    async def aclose(self) -> None:
        """Leave the weight-sync group, close the trainer and leave the ranks' process group."""
        if self.pusher is not None:
            await self.pusher.aclose()
        if self.trainer is not None:
            await asyncio.to_thread(self.trainer.close)
        if dist.is_initialized():
            await asyncio.to_thread(dist.destroy_process_group)

    @property
    def _trainer(self) -> Trainer:
        assert self.trainer is not None, "setup() first"
        return self.trainer


class _ManagerFleetView:
    """The rollout manager's fleet, seen from trainer rank 0 (a :class:`~agentrl.engines.pusher.FleetView`)."""

    def __init__(self, manager: Any, timeout_s: float) -> None:
        self.manager, self.timeout_s = manager, timeout_s

    async def engine_urls(self) -> tuple[list[str], int]:
        urls: tuple[list[str], int] = await asyncio.wait_for(self.manager.engine_urls.remote(), self.timeout_s)
        return urls

    async def hold_checks(self, hold: bool) -> None:
        await asyncio.wait_for(self.manager.hold_checks.remote(hold), self.timeout_s)

    async def wait_for_change(self, epoch: int) -> bool:
        changed: bool = await asyncio.wait_for(self.manager.wait_for_change.remote(epoch), self.timeout_s)
        return changed


class RolloutManagerActor(RolloutManager):
    """The run's :class:`RolloutManager`, with its engines as actors on their bundles."""

    def __init__(self, cfg: TrainConfig, model_dir: str, run_dir: str, placement: Placement) -> None:
        super().__init__(cfg, Path(model_dir), Path(run_dir), engine_factory=self._engine, restart_hook=self._restart)
        self.placement = placement
        self.trainer0: Any = None

    async def start_with(self, trainer0: Any) -> None:
        """:meth:`start`; ``trainer0`` (rank 0's handle) gives relaunched engines their weights."""
        self.trainer0 = trainer0
        await self.start()

    # ------------------------------------------------------------------ the fleet, for rank 0's pusher
    async def engine_urls(self) -> tuple[list[str], int]:
        return await self._fleet().engine_urls()

    async def hold_checks(self, hold: bool) -> None:
        await self._fleet().hold_checks(hold)

    async def wait_for_change(self, epoch: int) -> bool:
        return await self._fleet().wait_for_change(epoch)

    def _fleet(self) -> FleetView:
        backend = self.backend
        assert backend is not None and backend.fleet is not None, "start() first"
        return backend.fleet

    def _engine(self, index: int, spec: EngineSpec, run_dir: Path) -> Engine:
        bundles = self.placement.engines[index]
        gpu_ids = [b.gpu_id for b in bundles if b.gpu_id is not None]
        if not gpu_ids:  # CPU bundles: the server computes with the CPUs its bundles hold
            threads = str(self.placement.layout.cpus_per_bundle * len(bundles))
            spec = dataclasses.replace(spec, env={**spec.env, "OMP_NUM_THREADS": threads})
        return ActorEngine(spec, f"engine-{index}", run_dir, self.placement.actor_options("engine", index), gpu_ids)

    async def _restart(self, url: str, engine: str) -> None:
        assert self.trainer0 is not None
        await self.trainer0.push_latest_to.remote(url, engine)
