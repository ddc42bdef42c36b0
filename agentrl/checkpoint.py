"""Checkpoints that resume a run exactly: weights, optimizer, step, data position and RNG state.

Layout::

    SAVE/step_00012/state.pt        a torch.save dict of plain data only (tensors, numbers,
                                    strings, tuples, lists, dicts), loaded with weights_only=True
    SAVE/step_00012/manifest.json   {"bytes": size of state.pt, "sha256": its hex digest}
    SAVE/latest                     the name of the newest complete step, e.g. "step_00012"

A checkpoint is written into a ``.partial-*`` directory and renamed into place together with its
manifest, so a run killed while saving leaves the earlier checkpoints intact; the next save
removes the partial directories that killed saves left behind.

Loading comes in two parts so that a run can check ``--load`` before it spends minutes loading a
model: :func:`find_checkpoint` picks the newest intact checkpoint (the step ``latest`` names if
its size and digest match its manifest, else the newest older one that does, with a warning
naming what was wrong) and :func:`read_checkpoint` loads it. :func:`load_checkpoint` does both.

Every function here blocks while it writes, hashes or reads the state file (gigabytes for a big
model): from an event loop, call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agentrl.errors import AgentRLError, ConfigError

log = logging.getLogger(__name__)

STATE, MANIFEST, LATEST = "state.pt", "manifest.json", "latest"
PARTIAL = ".partial-"
"""Name prefix of a checkpoint being written (and of one being replaced)."""
_STEP = re.compile(r"step_\d{5,}")


@dataclass
class LoopState:
    """What the training loop itself must restore: the next step (also the weight version of
    the saved weights) and where the data stands."""

    step: int
    data_position: dict[str, int]


def save_checkpoint(root: str | Path, state: LoopState, trainer_state: dict[str, Any]) -> Path:
    """Write the checkpoint of step ``state.step`` under ``root`` and point ``latest`` at it.

    ``trainer_state`` must be plain data (tensors, numbers, strings, tuples, lists, dicts), as
    ``state_dict()`` of a model, an optimizer or an LR scheduler is. A checkpoint of the same
    step is replaced. Blocking: writes and then hashes the whole state.

    Returns:
        The checkpoint's directory, ``root/step_NNNNN``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_partials(root)
    final = root / f"step_{state.step:05d}"
    tmp = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=root))
    try:
        payload = {"loop": vars(state), "trainer": trainer_state, "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}}
        _write_state(tmp, payload)
        _replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (root / f"{LATEST}.tmp").write_text(final.name)
    os.replace(root / f"{LATEST}.tmp", root / LATEST)
    return final


def find_checkpoint(root: str | Path) -> Path:
    """The directory of the newest intact checkpoint under ``root``.

    That is the step ``latest`` names if its state file's size and sha256 match its manifest,
    else the newest older step that does; skipping one logs a warning naming what was wrong and
    which checkpoint is used. Only ``step_NNNNN`` directories of ``root`` itself are considered.
    Blocking: hashes the state file.

    Raises:
        ConfigError: ``root`` holds no checkpoint, or none is intact (one line naming each problem).
    """
    root = Path(root)
    candidates, problems = _candidates(root)
    if not candidates and not problems:
        raise ConfigError(f"--load {root}: no checkpoint there (no '{LATEST}' file, no step_NNNNN directory); pass the --save directory of an earlier run")
    for path in candidates:
        problem = _problem(path)
        if problem is None:
            if problems:
                log.warning("--load %s: %s; using %s", root, "; ".join(problems), path.name)
            return path
        problems.append(f"{path.name}: {problem}")
    raise ConfigError(f"--load {root}: no usable checkpoint ({'; '.join(problems)}); pass a directory holding an intact checkpoint, or start without --load")


def read_checkpoint(checkpoint: str | Path) -> tuple[LoopState, dict[str, Any]]:
    """Load the checkpoint directory :func:`find_checkpoint` returned; restores the RNG state as
    a side effect. Loads plain data only (``weights_only=True``), so a crafted file cannot run
    code; does not hash the file again. Blocking: reads the whole state.

    Raises:
        ConfigError: the state file holds more than plain data, or is not an agentrl checkpoint.
    """
    path = Path(checkpoint) / STATE
    try:
        payload = torch.load(path, weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:
        raise ConfigError(f"{path} could not be read as a torch checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
    except pickle.UnpicklingError as e:
        detail = re.search(r"WeightsUnpickler error: ([^.\n]*)", str(e))
        raise ConfigError(
            f"{path}: a checkpoint may hold only plain data (tensors, numbers, strings, containers), this one holds more "
            f"({detail.group(1) if detail else str(e).splitlines()[0]}), so it was not loaded; load only checkpoints agentrl's save_checkpoint wrote"
        ) from e
    try:
        state, trainer_state, rng = LoopState(**payload["loop"]), payload["trainer"], payload["rng"]
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path} is not an agentrl checkpoint (expected 'loop', 'trainer' and 'rng' as save_checkpoint writes them): {e!r}") from e
    return state, trainer_state


def restore_checkpoint(checkpoint: str | Path, load_trainer_state: Callable[[dict[str, Any]], None]) -> LoopState:
    """Read ``checkpoint`` (see :func:`read_checkpoint`), hand its trainer state to
    ``load_trainer_state`` (a trainer's ``load_state_dict``) and return the loop state. Blocking.

    Raises:
        ConfigError: as :func:`read_checkpoint`; or the trainer state does not fit the trainer
            (written for another model or ``--train-backend``), naming ``--load``.
    """
    state, trainer_state = read_checkpoint(checkpoint)
    try:
        load_trainer_state(trainer_state)
    except AgentRLError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise ConfigError(f"--load {checkpoint}: its trainer state does not fit this run's model (was it written for another "
                          f"--hf-checkpoint or --train-backend?): {type(e).__name__}: {first}") from e
    return state


def load_checkpoint(root: str | Path) -> tuple[LoopState, dict[str, Any]]:
    """Read the newest intact checkpoint under ``root``: :func:`find_checkpoint`, then
    :func:`read_checkpoint` (see both for what is checked and raised). Blocking."""
    return read_checkpoint(find_checkpoint(root))


def _write_state(directory: Path, payload: dict[str, Any]) -> None:
    """``state.pt`` and its manifest in ``directory``, both flushed to disk."""
    state = directory / STATE
    with open(state, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    manifest = {"bytes": state.stat().st_size, "sha256": _sha256(state)}
    with open(directory / MANIFEST, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())


def _replace_dir(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``. An existing ``final`` is first moved aside under a partial
    name, so a kill in between leaves debris the next save removes, never a half-replaced step."""
    if not final.exists():
        os.replace(new, final)
        return
    aside = new.with_name(f"{new.name}-replaced")
    os.replace(final, aside)
    os.replace(new, final)
    shutil.rmtree(aside)


def _remove_partials(root: Path) -> None:
    for partial in root.glob(f"{PARTIAL}*"):
        log.warning("removing %s, left by a checkpoint save that did not finish", partial)
        shutil.rmtree(partial, ignore_errors=True)


def _candidates(root: Path) -> tuple[list[Path], list[str]]:
    """The checkpoints to try, newest first, and the problems already found (with ``latest``)."""
    steps = sorted((p for p in root.iterdir() if _STEP.fullmatch(p.name) and p.is_dir()), key=_step_of, reverse=True) if root.is_dir() else []
    latest = root / LATEST
    if not latest.is_file():
        return steps, [f"no '{LATEST}' file"] if steps else []
    name = latest.read_text(errors="replace").strip()
    if not _STEP.fullmatch(name):
        return steps, [f"'{LATEST}' names {name!r}, not a step_NNNNN directory of this one"]
    return [root / name] + [p for p in steps if _step_of(p) < _step_of(root / name)], []


def _problem(checkpoint: Path) -> str | None:
    """What is wrong with ``checkpoint``, or ``None`` when its state matches its manifest."""
    if not checkpoint.is_dir():
        return "the directory is missing"
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
        size, digest = int(manifest["bytes"]), str(manifest["sha256"])
    except FileNotFoundError:
        return f"{MANIFEST} is missing (a save that did not finish, or one from before agentrl wrote digests)"
    except (ValueError, KeyError, TypeError) as e:
        return f"{MANIFEST} is unreadable ({e!r})"
    state = checkpoint / STATE
    if not state.is_file():
        return f"{STATE} is missing"
    if state.stat().st_size != size:
        return f"{STATE} has {state.stat().st_size} bytes, the manifest says {size} (truncated or overwritten)"
    if _sha256(state) != digest:
        return f"the sha256 of {STATE} does not match the manifest (the file is corrupted)"
    return None


def _step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
