"""Checkpoints that resume a run exactly: weights, optimizer, step, data position and RNG state.

Layout: ``SAVE/step_00012/state.pt`` (a ``torch.save`` dict) and ``SAVE/latest`` naming the
newest complete step. A checkpoint is written to a temporary directory and renamed into place,
so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.errors import ConfigError


@dataclass
class LoopState:
    """What the training loop itself must restore: the next step (also the weight version of
    the saved weights) and where the data stands."""

    step: int
    data_position: dict[str, int]


def save_checkpoint(root: str | Path, state: LoopState, trainer_state: dict[str, Any]) -> Path:
    """Write a checkpoint of step ``state.step`` under ``root`` and point ``latest`` at it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{state.step:05d}"
    payload = {
        "loop": vars(state),
        "trainer": trainer_state,
        "rng": {"python": random.getstate(), "torch": torch.get_rng_state()},
    }
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        torch.save(payload, Path(tmp) / "state.pt")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        os.makedirs(tmp)  # TemporaryDirectory removes it on exit
    (root / "latest.tmp").write_text(final.name)
    os.replace(root / "latest.tmp", root / "latest")
    return final


def load_checkpoint(root: str | Path) -> tuple[LoopState, dict[str, Any]]:
    """Read the newest checkpoint under ``root``; restores the RNG state as a side effect.

    Raises:
        ConfigError: ``root`` holds no checkpoint.
    """
    root = Path(root)
    latest = root / "latest"
    if not latest.is_file():
        raise ConfigError(f"--load {root}: no checkpoint there (no 'latest' file)")
    payload = torch.load(root / latest.read_text().strip() / "state.pt", weights_only=False)
    random.setstate(payload["rng"]["python"])
    torch.set_rng_state(payload["rng"]["torch"])
    return LoopState(**payload["loop"]), payload["trainer"]
