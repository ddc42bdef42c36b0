"""What the training loop drives, wherever it runs: the trainer ranks and the rollout side.

A launcher (:mod:`agentrl.launch.local`, :mod:`agentrl.launch.ray_launcher`) starts both and hands
the loop a :class:`Trainers` and a :class:`Rollouts`. The loop in :mod:`agentrl.train` reads the
same either way; the launcher decides only where things run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from agentrl.checkpoint import LoopState
from agentrl.rollout.manager import RolloutResult
from agentrl.rollout.trajectory import Trajectory
from agentrl.trainers.dp_split import RankShare


class Rollouts(Protocol):
    """The rollout side: a :class:`~agentrl.rollout.manager.RolloutManager`, here or in an actor."""

    async def rollout(self, step: int) -> RolloutResult:
        """Training step ``step``'s episodes (``step`` counted from 0)."""

    async def evaluate(self) -> dict[str, list[Trajectory]]:
        """Every eval dataset's episodes, by dataset name."""

    async def seek(self, position: dict[str, int]) -> None:
        """Continue the task stream from a checkpoint's data position."""

    async def note_weight_version(self, weight_version: int) -> None:
        """The engines now serve ``weight_version``."""


class Trainers(Protocol):
    """The trainer ranks (one, or several data-parallel ones).

    Attributes:
        world_size: the data-parallel ranks; :meth:`train` takes one share per rank.
    """

    world_size: int

    async def train(self, shares: list[RankShare]) -> dict[str, float]:
        """One rollout's optimizer steps, share ``i`` on rank ``i``; the metrics of the whole
        batch (loss terms summed over ranks, as each rank's are normalised by global counts)."""

    async def push_weights(self, weight_version: int) -> None:
        """Load the current weights into every engine, which then serve ``weight_version``."""

    async def save(self, root: Path, state: LoopState) -> Path:
        """Write a checkpoint of the weights, optimizer and ``state`` under ``root``; its directory."""

    async def load(self, checkpoint: Path) -> LoopState:
        """Restore every rank from ``checkpoint`` (see :func:`agentrl.checkpoint.find_checkpoint`)."""

    async def export_hf(self, path: Path) -> None:
        """Write the trained weights as a Hugging Face model directory."""
