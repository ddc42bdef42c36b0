"""One child process (an engine or the router) that logs to a file and can be stopped as a tree.

The child starts in a session of its own, so a signal reaches every process it spawned (SGLang
runs its scheduler and detokenizer as child processes) and a Ctrl-C in the terminal, or a signal
to agentrl's process group, reaches only agentrl, which then stops its children in order.

Every wait on a child is bounded and polled with ``asyncio.sleep``, so stopping one never stalls
the event loop; a child that outlives a wait is logged, naming what was waited for. Every started
child is registered until it is reaped: :func:`kill_started_processes` (synchronous, bounded,
safe in a signal handler; run at interpreter exit) kills what is left.

A child cannot outlive the process that started it, even one killed with SIGKILL (no handler
runs then: ``kill -9`` of ``agentrl train``, Ray killing an actor when its job stops): on Linux
it runs under :data:`ORPHAN_GUARD`, which asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``) and then execs the command.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

KILL_WAIT_S = 10.0
"""Longest :meth:`ManagedProcess.kill` waits for a SIGKILLed process to exit (it does not exit
at once only when stuck in the kernel, e.g. in a GPU driver call)."""

POLL_S = 0.05
"""How often a wait on a process looks whether it exited."""

ORPHAN_GUARD = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(1)  # the parent died before the prctl\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)
"""``python -c ORPHAN_GUARD PARENT_PID ARGV...``: runs ARGV, SIGKILLed when its parent dies."""

log = logging.getLogger(__name__)
_started: dict[int, ManagedProcess] = {}  # id(process) -> process, from its start until it is reaped


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (another process may take it later)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
        """Spawn the process and register it for :func:`kill_started_processes`. Raises ``OSError``
        if the executable cannot be run."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n# agentrl: {time.strftime('%Y-%m-%d %H:%M:%S')} launching {self.name}: {shlex.join(self.command)}\n".encode())
            log_file.flush()
            self._proc = subprocess.Popen(_guarded(self.command), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                          env=self._env, start_new_session=True)
        _started[id(self)] = self

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

    async def stop(self, grace_s: float, *, kill_wait_s: float = KILL_WAIT_S) -> bool:
        """SIGTERM the process tree, wait up to ``grace_s`` for the process to exit, then :meth:`kill`
        what is left (also when cancelled). Never blocks the event loop.

        Returns:
            Whether the process is gone (reaped); see :meth:`kill`. A process that outlives its
            grace is logged at warning level.
        """
        try:
            if self._proc is not None and not self._reaped and self._proc.poll() is None:
                self._signal(signal.SIGTERM)
                if not await self._exited_within(grace_s):
                    log.warning("%s (pid %d) did not exit within %gs of SIGTERM; sending SIGKILL to its process group",
                                self.name, self._proc.pid, grace_s)
        finally:
            gone = await self.kill(kill_wait_s)
        return gone

    async def kill(self, wait_s: float = KILL_WAIT_S) -> bool:
        """SIGKILL the process tree (before the first ``await``: a cancelled caller still kills it)
        and wait up to ``wait_s`` for the process to exit; safe to call twice. Never blocks the loop.

        Returns:
            Whether the process is gone (reaped, or never started). ``False`` (logged at error
            level, naming the wait): it still ran ``wait_s`` after SIGKILL; it stays registered
            for :func:`kill_started_processes`.
        """
        if self._proc is None or self._reaped:
            return True
        self.kill_now()
        if await self._exited_within(wait_s):
            self._forget()
            return True
        log.error("%s (pid %d) still ran %gs after SIGKILL (stuck in the kernel?); stopped waiting for it", self.name, self._proc.pid, wait_s)
        return False

    def kill_now(self) -> None:
        """SIGKILL the process tree without waiting (never blocks): for cleanup that a cancellation
        may cut short; :meth:`kill` then waits for the exit."""
        self._signal(signal.SIGKILL)

    def kill_sync(self, wait_s: float) -> bool:
        """:meth:`kill`, blocking for up to ``wait_s``: only for signal handlers and ``atexit``,
        where no event loop runs. Logs nothing. Returns whether the process is gone."""
        if self._proc is None or self._reaped:
            return True
        self.kill_now()
        try:
            self._proc.wait(timeout=max(wait_s, 0.0))
        except subprocess.TimeoutExpired:
            return False
        self._forget()
        return True

    def describe(self, chars: int = 3000) -> str:
        """The command and the tail of the log, for error messages."""
        return f"command: {shlex.join(self.command)}\nlog {self.log_path}, last lines:\n{self.tail(chars)}"

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError), open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - chars))
            return log.read().decode(errors="replace")
        return ""

    async def _exited_within(self, timeout_s: float) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while self._proc.poll() is None:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL_S)
        return True

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._reaped:
            return  # a reaped group's id may be reused from now on: never signal it again
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)  # the group outlives its leader while any member lives

    def _forget(self) -> None:
        self._reaped = True
        _started.pop(id(self), None)


def _guarded(command: list[str]) -> list[str]:
    """``command`` under :data:`ORPHAN_GUARD` where the kernel offers it (Linux)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-c", ORPHAN_GUARD, str(os.getpid()), *command]


def kill_started_processes(timeout_s: float = 5.0) -> list[str]:
    """SIGKILL the process tree of every :class:`ManagedProcess` this interpreter started and has
    not reaped, and wait up to ``timeout_s`` in all for them to exit. Safe to call again.

    Synchronous, bounded, lock-free and silent: safe in a signal handler (e.g. SIGTERM's, which
    children in their own sessions do not get) and in ``atexit`` (where this module registers it).

    Returns:
        ``"NAME (pid PID)"`` of each process still running at the deadline; empty when all are gone.
    """
    processes = list(_started.values())
    for process in processes:
        process.kill_now()  # all at once: their exits overlap
    deadline = time.monotonic() + timeout_s
    return [f"{p.name} (pid {p.pid})" for p in processes if not p.kill_sync(deadline - time.monotonic())]


atexit.register(kill_started_processes)


class ProcessOwner:
    """``stop`` and ``kill`` for whatever launches a :class:`ManagedProcess` into ``self.process``
    (``None`` before its first launch: both are then no-ops returning ``True``)."""

    process: ManagedProcess | None = None

    async def stop(self, grace_s: float) -> bool:
        """SIGTERM, up to ``grace_s`` to exit, then SIGKILL; whether it is gone (:meth:`ManagedProcess.stop`)."""
        return await self.process.stop(grace_s) if self.process is not None else True

    async def kill(self) -> bool:
        """SIGKILL its process tree and wait, bounded, for it; whether it is gone (:meth:`ManagedProcess.kill`)."""
        return await self.process.kill() if self.process is not None else True

    def kill_now(self) -> None:
        """SIGKILL its process tree without waiting (:meth:`ManagedProcess.kill_now`)."""
        if self.process is not None:
            self.process.kill_now()

