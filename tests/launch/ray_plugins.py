"""Plug-ins the Ray job tests load in their actors (the jobs put the repository on PYTHONPATH):
a reward with spread inside groups, and a two-turn env that SIGKILLs one engine actor mid-rollout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentrl.envs import register
from tests.engines.kill_worker_env import KillOnceEnv


async def length_reward(args: Any, sample: Any, **kwargs: Any) -> float:
    """A function of the whole text: varies within a group, so every step trains (GRPO advantages not all 0)."""
    return float(sum(map(ord, sample.response)) % 7) / 6


def actor_pids(class_name: str) -> list[int]:
    """PIDs of this machine's live Ray workers running an actor of ``class_name``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and title.startswith(f"ray::{class_name}".encode()):
            pids.append(int(proc.name))
    return sorted(pids)


class KillEngineActorEnv(KillOnceEnv):
    """Kills one engine actor."""

    def victim(self) -> int:
        return actor_pids("EngineActor")[0]


register("test/KillEngineActor-v0", KillEngineActorEnv)
