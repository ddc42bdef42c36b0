"""One child process (an engine or the router) that logs to a file and can be stopped as a tree.

The child starts in a session of its own, so a signal reaches every process it spawned (SGLang
runs its scheduler and detokenizer as child processes) and a Ctrl-C in the terminal reaches only
agentrl, which then stops its children in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (another process may take it later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ManagedProcess:
    """``command`` run once, stdout and stderr appended to ``log_path``.

    Args:
        name: what error messages call it, e.g. ``engine-0``.
        command: the argv.
        log_path: the log file (created with its directory; appended to, so relaunches of one
            engine share one file, each launch under a header line naming its command).
        env: variables set on top of this process's environment.
    """

    def __init__(self, name: str, command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name, self.command, self.log_path = name, list(command), log_path
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaped = False

    def start(self) -> None:
        """Spawn the process. Raises ``OSError`` if the executable cannot be run."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n# agentrl: {time.strftime('%Y-%m-%d %H:%M:%S')} launching {self.name}: {shlex.join(self.command)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          env=self._env, start_new_session=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal), else ``None``."""
        return self._proc.poll() if self._proc else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def stop(self, grace_s: float) -> None:
        """SIGTERM the process tree, wait up to ``grace_s`` for it to exit, then SIGKILL what is left."""
        if self._proc is None:
            return
        try:
            if self._proc.poll() is None:
                self._signal(signal.SIGTERM)
                deadline = time.monotonic() + grace_s
                while self._proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process tree and reap the process; safe to call twice (synchronous: safe in cleanup)."""
        if self._proc is None or self._reaped:
            return
        self._signal(signal.SIGKILL)
        self._proc.wait()
        self._reaped = True  # its process group id may be reused from now on: never signal it again

    def describe(self, chars: int = 3000) -> str:
        """The command and the tail of the log, for error messages."""
        return f"command: {shlex.join(self.command)}\nlog {self.log_path}, last lines:\n{self.tail(chars)}"

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - chars))
            return log.read().decode(errors="replace")
        return ""

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)  # the group outlives its leader while any member lives


class ProcessOwner:
    """``stop`` and ``kill`` for whatever launches a :class:`ManagedProcess` into ``self.process``
    (``None`` before its first launch: both are then no-ops)."""

    process: ManagedProcess | None = None

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, up to ``grace_s`` to exit, then SIGKILL."""
        if self.process is not None:
            await self.process.stop(grace_s)

    def kill(self) -> None:
        """SIGKILL its process tree now (synchronous, for cleanup)."""
        if self.process is not None:
            self.process.kill()

