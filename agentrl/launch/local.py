"""The local launcher (the default): one trainer (``--train-backend``) and the rollout side in the
loop's process.

The trainer's blocking work (training, checkpoint writes, exports) runs in a worker thread of its
own, so the event loop keeps serving rollouts (``--train-async``) and engines meanwhile, and
blocking env or tool calls that hang (each holding a thread of the loop's default pool) can never
leave training without a thread. Engines, when
asked for (``--rollout-num-engines``), are local processes behind sglang-router.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from agentrl.checkpoint import LoopState, restore_checkpoint, save_checkpoint
from agentrl.rollout.manager import RolloutManager
from agentrl.trainers.base import Trainer
from agentrl.trainers.build import build_trainer
from agentrl.trainers.dp_split import RankShare

if TYPE_CHECKING:
    from agentrl.config import TrainConfig

T = TypeVar("T")


class LocalTrainers:
    """:class:`~agentrl.launch.base.Trainers`: one :class:`~agentrl.trainers.base.Trainer` (the
    ``--train-backend`` one) in this process, whose weights reach the engines through ``manager``."""

    world_size = 1

    def __init__(self, trainer: Trainer, manager: RolloutManager, worker: ThreadPoolExecutor) -> None:
        self.trainer, self.manager, self.worker = trainer, manager, worker

    async def train(self, shares: list[RankShare]) -> dict[str, float]:
        (share,) = shares
        return await _on(self.worker, self.trainer.train_rollout, share.sequences, share.num_samples)

    async def push_weights(self, weight_version: int) -> None:
        await self.manager.push(self.trainer.named_weights(), weight_version)

    async def save(self, root: Path, state: LoopState) -> Path:
        return await _on(self.worker, save_checkpoint, root, state, self.trainer.state_dict())

    async def load(self, checkpoint: Path) -> LoopState:
        return await _on(self.worker, restore_checkpoint, checkpoint, self.trainer.load_state_dict)

    async def export_hf(self, path: Path) -> None:
        await _on(self.worker, self.trainer.save_hf, path)


async def _on(worker: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(worker, functools.partial(fn, *args))


@contextlib.asynccontextmanager
async def launch_local(cfg: TrainConfig, model_dir: Path, run_dir: Path) -> AsyncIterator[tuple[LocalTrainers, RolloutManager]]:
    """Read the rollout inputs, load the trainer, start the engines; stop them and close the
    trainer on exit."""
    worker = ThreadPoolExecutor(1, thread_name_prefix="agentrl-trainer")
    try:
        manager = await _on(worker, RolloutManager, cfg, model_dir, run_dir)  # bad task files and plug-ins fail before any model loads
        trainer = await _on(worker, functools.partial(build_trainer, cfg.train_backend, model_dir, cfg.trainer(), cfg.loss(),
                                                      device=cfg.device, megatron=cfg.megatron(), seed=cfg.seed))
        try:
            await manager.start()
            yield LocalTrainers(trainer, manager, worker), manager
        finally:
            try:
                await manager.aclose()
            finally:
                trainer.close()
    finally:
        worker.shutdown(wait=False)  # a call cancelled mid-way finishes on its own; the interpreter joins it at exit
