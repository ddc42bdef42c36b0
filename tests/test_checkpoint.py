"""Checkpoints load only plain data (weights_only), only from inside their directory, only when
their digest matches, fall back to the newest intact one, and leave no debris of killed saves."""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agentrl import checkpoint
from agentrl.checkpoint import LoopState, load_checkpoint, save_checkpoint
from agentrl.errors import ConfigError
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.batching import TrainSequence
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig
from tests.trainers.conftest import tiny_model_dir  # noqa: F401  (a fixture)

WEIGHTS = torch.arange(4096, dtype=torch.float32)


def save_steps(root: Path, *steps: int) -> None:
    for step in steps:
        save_checkpoint(root, LoopState(step, {"epoch": 0, "cursor": step}), {"w": WEIGHTS + step})


def test_a_real_trainer_state_round_trips_with_weights_only(tmp_path, tiny_model_dir):  # noqa: F811
    config = TrainerConfig(bf16=False, lr=1e-3, lr_decay_style="cosine", lr_warmup_iters=1, lr_decay_iters=10)
    trainer = TorchTrainer(tiny_model_dir, config, LossConfig())
    trainer.train_rollout([TrainSequence(list(range(10)), 4, [1] * 6, [-1.0] * 6, [1.0] * 6, 0)], num_samples=1)
    random.seed(7)
    torch.manual_seed(7)
    save_checkpoint(tmp_path, LoopState(3, {"epoch": 1, "cursor": 5}), trainer.state_dict())
    expected = (random.random(), torch.rand(3))
    state, trainer_state = load_checkpoint(tmp_path)
    assert state == LoopState(3, {"epoch": 1, "cursor": 5})
    assert (random.random(), *torch.rand(3)) == (expected[0], *expected[1])  # RNG restored
    fresh = TorchTrainer(tiny_model_dir, config, LossConfig())
    fresh.load_state_dict(trainer_state)
    assert fresh.scheduler.state_dict() == trainer.scheduler.state_dict()
    assert fresh.optimizer.state_dict()["state"][0]["exp_avg"].equal(trainer.optimizer.state_dict()["state"][0]["exp_avg"])
    assert all(a.equal(b) for a, b in zip(fresh.model.parameters(), trainer.model.parameters()))


def test_a_crafted_pickle_does_not_run_and_the_error_names_the_file(tmp_path):
    marker = tmp_path / "marker"

    class Crafted:
        def __reduce__(self):
            return exec, (f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')",)

    save_checkpoint(tmp_path / "ckpt", LoopState(1, {}), {"model": Crafted()})
    with pytest.raises(ConfigError, match=r"step_00001/state\.pt.*only plain data") as info:
        load_checkpoint(tmp_path / "ckpt")
    assert not marker.exists(), "unpickling ran code"
    assert "\n" not in str(info.value)


def test_latest_must_name_a_step_inside_the_root(tmp_path, caplog):
    save_steps(tmp_path / "elsewhere", 1)
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "latest").write_text("../elsewhere/step_00001")
    with pytest.raises(ConfigError, match=r"'latest' names '\.\./elsewhere/step_00001', not a step_NNNNN"):
        load_checkpoint(root)
    save_steps(root, 2)
    (root / "latest").write_text("../elsewhere/step_00001")
    assert load_checkpoint(root)[0].step == 2  # this root's own newest, never the file outside
    assert "'latest' names '../elsewhere/step_00001'" in caplog.text


def truncate(state: Path) -> None:
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])


def flip_tensor_bytes(state: Path) -> None:
    data = bytearray(state.read_bytes())
    start = data.find((WEIGHTS + 2).numpy().tobytes()[:256])
    assert start > 0, "the tensor data is not stored as is"
    start += 1024
    data[start : start + 64] = bytes(b ^ 0xFF for b in data[start : start + 64])
    state.write_bytes(bytes(data))


BREAKAGES = {
    "truncated": (truncate, "state.pt has"),
    "empty": (lambda state: state.write_bytes(b""), "state.pt has 0 bytes"),
    "missing file": (lambda state: state.unlink(), "state.pt is missing"),
    "missing directory": (lambda state: shutil.rmtree(state.parent), "step_00002: the directory is missing"),
    "flipped bytes": (flip_tensor_bytes, "sha256 of state.pt does not match"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog, breakage):
    break_it, problem = BREAKAGES[breakage]
    save_steps(tmp_path, 1, 2)
    break_it(tmp_path / "step_00002" / "state.pt")
    state, trainer_state = load_checkpoint(tmp_path)
    assert state.step == 1 and trainer_state["w"].equal(WEIGHTS + 1)
    assert checkpoint.find_checkpoint(tmp_path) == tmp_path / "step_00001"
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "step_00002" in r.getMessage())
    assert problem in warning and "using step_00001" in warning


def test_no_usable_checkpoint_is_one_config_error_line(tmp_path):
    save_steps(tmp_path, 1, 2)
    truncate(tmp_path / "step_00001" / "state.pt")
    (tmp_path / "step_00002" / "state.pt").unlink()
    with pytest.raises(ConfigError) as info:
        load_checkpoint(tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "step_00002: state.pt is missing" in message and "step_00001: state.pt has" in message
    with pytest.raises(ConfigError, match="no checkpoint there"):
        load_checkpoint(tmp_path / "nothing")


KILLED_SAVE = """
import os, signal, sys, torch
from agentrl import checkpoint
real_save = torch.save

def save_then_die(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save_then_die
checkpoint.save_checkpoint(sys.argv[1], checkpoint.LoopState(2, {}), {"w": torch.ones(3)})
"""


def test_a_killed_save_leaves_no_partial_directory_after_the_next_save(tmp_path):
    save_steps(tmp_path, 1)
    killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(tmp_path)], capture_output=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert len(os.listdir(tmp_path)) == 3, "the killed save left its partial directory"
    assert load_checkpoint(tmp_path)[0].step == 1
    save_steps(tmp_path, 2)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00001", "step_00002"]
    assert load_checkpoint(tmp_path)[0].step == 2 and checkpoint.find_checkpoint(tmp_path) == tmp_path / "step_00002"


def test_saving_a_step_again_replaces_it(tmp_path):
    save_steps(tmp_path, 1, 2)
    save_checkpoint(tmp_path, LoopState(2, {"epoch": 9, "cursor": 9}), {"w": WEIGHTS})
    state, trainer_state = load_checkpoint(tmp_path)
    assert state.data_position == {"epoch": 9, "cursor": 9} and trainer_state["w"].equal(WEIGHTS)
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_00001", "step_00002"]
