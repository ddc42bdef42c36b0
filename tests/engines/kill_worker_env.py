"""A two-turn env for fault tests: the first episode to reach its first step SIGKILLs one
`agentrl serve` worker serving ``model_path`` (once per ``marker`` file), mid-rollout."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from agentrl.envs import Action, Env, Message, StepResult, Task, register


def serve_pids(model_path: str) -> list[int]:
    """PIDs of the `agentrl serve` processes whose command line names ``model_path``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"agentrl.cli" in argv and b"serve" in argv and model_path.encode() in argv:
            pids.append(int(proc.name))
    return sorted(pids)


class KillOnceEnv(Env):
    """Two turns; the first episode to reach its first step SIGKILLs the process :meth:`victim`
    names (once per ``marker`` file). The reward varies within a group, so every step trains."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    def victim(self) -> int:
        """The PID to kill (reads /proc: called off the event loop)."""
        raise NotImplementedError

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self.turn = 0
        return [{"role": "user", "content": f"Say something about {task.prompt}."}], {}

    async def step(self, action: Action) -> StepResult:
        self.turn += 1
        if self.turn == 1 and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(await asyncio.to_thread(self.victim), signal.SIGKILL)
        if self.turn == 1:
            return StepResult([{"role": "user", "content": "Go on."}], 0.0, False, False, {})
        return StepResult([], float(sum(map(ord, action.text)) % 7) / 6, True, False, {})


class KillWorkerEnv(KillOnceEnv):
    """Kills one `agentrl serve` worker serving ``model_path``."""

    def __init__(self, model_path: str, marker: str) -> None:
        super().__init__(marker)
        self.model_path = model_path

    def victim(self) -> int:
        return serve_pids(self.model_path)[0]


register("test/KillWorker-v0", KillWorkerEnv)
