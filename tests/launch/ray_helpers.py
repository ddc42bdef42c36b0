"""A real Ray cluster on this machine for the launcher tests: a head started with ``ray start``,
jobs submitted with ``ray job submit``, and what the tests read back."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled"}  # a test cluster on loopback
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Head:
    """A running head node: its GCS address and its dashboard (job API) URL."""

    address: str
    dashboard: str

    def submit(self, sid: str, *entrypoint: str, wait: bool = True, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        """``ray job submit`` (streaming logs until the job ends unless ``wait`` is off); the job's
        processes find the test plug-ins (``tests.launch.ray_plugins``) on PYTHONPATH."""
        runtime_env = {"env_vars": {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}}
        cmd = [RAY, "job", "submit", "--address", self.dashboard, "--submission-id", sid, "--runtime-env-json", json.dumps(runtime_env),
               *([] if wait else ["--no-wait"]), "--", *entrypoint]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=ENV)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def status(self, sid: str) -> str:
        return str(self.client().get_job_status(sid).value)

    def logs(self, sid: str) -> str:
        return str(self.client().get_job_logs(sid))

    def stop(self, sid: str) -> None:
        self.client().stop_job(sid)


def start_head(num_cpus: int = 8) -> Head:
    port, dashboard = free_port(), free_port()
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--num-cpus", str(num_cpus), "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard), "--disable-usage-stats", "--include-dashboard", "true"],
                   check=True, capture_output=True, timeout=300, env=ENV)
    return Head(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}")


def stop_head() -> None:
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=180, env=ENV)


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """A small fp32 run on the tiny model: 2 prompts x 2 samples, 8 tokens, every step saved."""
    return ["--hf-checkpoint", str(model), "--prompt-data", str(data), "--rollout-batch-size", "2", "--n-samples-per-prompt", "2",
            "--rollout-max-response-len", "8", "--output-dir", str(out), "--save-interval", "1", "--lr", "1e-3", "--no-bf16",
            "--deterministic", "--custom-rm-path", "tests.launch.ray_plugins.length_reward", "--actor-num-cpus-per-rank", "2", *extra]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def steps(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(out) if "rollout/reward_mean" in r}


def dumped(out: Path, step: int) -> list[dict]:
    return [json.loads(line) for line in (out / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines()]


def wait_for(condition, timeout_s: float, what: str, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s:g} s: {what}"
        time.sleep(poll_s)


ROUTER = r"^sglang::router|sglang_router\.launch_router"
"""sglang-router's process: it retitles itself ``sglang::router`` once it runs."""


def processes(pattern: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose command line matches ``pattern``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().split()[2]
            except OSError:
                continue
            if state != "Z" and re.search(pattern, cmdline):
                found.append((int(entry.name), cmdline))
    return found
