"""Plug-ins the Ray job tests load in their actors (the jobs put the repository on PYTHONPATH):
a reward with spread inside groups, and a two-turn env that SIGKILLs one engine actor mid-rollout."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from agentrl.envs import Action, Env, Message, StepResult, Task, register


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


class KillEngineActorEnv(Env):
    """The first episode to reach its first step SIGKILLs one engine actor (once per ``marker``)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self.turn = 0
        return [{"role": "user", "content": f"Say something about {task.prompt}."}], {}

    async def step(self, action: Action) -> StepResult:
        self.turn += 1
        if self.turn == 1 and not self.marker.exists():
            self.marker.write_text("killed")
            pids = await asyncio.to_thread(actor_pids, "EngineActor")
            os.kill(pids[0], signal.SIGKILL)
        if self.turn == 1:
            return StepResult([{"role": "user", "content": "Go on."}], 0.0, False, False, {})
        return StepResult([], float(sum(map(ord, action.text)) % 7) / 6, True, False, {})


register("test/KillEngineActor-v0", KillEngineActorEnv)
