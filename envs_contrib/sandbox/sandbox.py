"""A sandbox for model-written Python: a separate process in fresh Linux namespaces, under limits.

:class:`PythonSandbox` runs ``code`` as ``main.py`` in a temporary working directory, through
``unshare`` (util-linux) and :mod:`envs_contrib.sandbox.jail`:

* **no network**: a new network namespace holds only a loopback device that is down;
* **nothing of the host writable**: a new mount namespace in which every mount is read-only except
  the working directory (``TMPDIR`` and ``HOME`` point there); as root, the code also runs as an
  unprivileged uid of its own (``UID_BASE`` + a slot), with ``/root`` hidden but for the Python
  installation; without root, a user namespace maps the caller to root inside and capabilities
  are dropped before the code runs, so the mounts cannot be made writable again;
* **its own processes**: a new pid namespace (the code is not shown the host's processes), and
  killing the sandbox kills all of them;
* **limits**: CPU seconds (``RLIMIT_CPU``), address space (``RLIMIT_AS``), processes
  (``RLIMIT_NPROC``, counted per uid: a fork bomb stops there), size of files written
  (``RLIMIT_FSIZE``), bytes of output kept (the rest is cut, with a marker) and wall-clock time
  (the whole namespace is killed).

Not done: no seccomp filter (the code may make any system call the kernel allows an unprivileged
process); without root, the process limit counts the caller's other processes too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agentrl.errors import AgentRLError

JAIL = Path(__file__).with_name("jail.py")
UID_BASE = 620000
"""As root, sandboxes run as uids ``UID_BASE`` .. ``UID_BASE + MAX_SLOTS``, one each, so that the
process limit of one is not shared with the sandboxes beside it."""
MAX_SLOTS = 4096


class SandboxError(AgentRLError):
    """The sandbox cannot be set up on this machine (no ``unshare``, namespaces refused)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one run.

    Attributes:
        cpu_s: CPU seconds (the process is killed by SIGXCPU/SIGKILL past them).
        wall_s: wall-clock seconds of the whole run.
        memory_mb: address space of each process, in MiB.
        processes: processes and threads of the sandbox's uid.
        output_bytes: stdout and stderr bytes kept, each.
        file_size_mb: largest file the code may write, in MiB.
    """

    cpu_s: int = 5
    wall_s: float = 10.0
    memory_mb: int = 512
    processes: int = 32
    output_bytes: int = 8192
    file_size_mb: int = 16


@dataclass(frozen=True)
class SandboxResult:
    """What a run left.

    Attributes:
        exit_code: the code's exit status (negative: killed by that signal); ``None`` when the
            sandbox killed it at its wall-clock limit.
        stdout, stderr: the output, each cut to ``output_bytes`` (with a marker).
        limit: the limit that stopped it (``"wall_time"``, ``"cpu_time"``, ``"memory"``,
            ``"output"``, ``"processes"``), or ``None``.
        elapsed_s: wall-clock seconds.
    """

    exit_code: int | None
    stdout: str
    stderr: str
    limit: str | None
    elapsed_s: float

    def message(self) -> str:
        """The result as a tool message: a line naming a limit, the exit status, the output."""
        lines = [LIMIT_MESSAGES[self.limit]] if self.limit else []
        lines.append(f"exit code {self.exit_code}" if self.exit_code is not None else "killed")
        if self.stdout:
            lines.append(f"stdout:\n{self.stdout.rstrip()}")
        if self.stderr:
            lines.append(f"stderr:\n{self.stderr.rstrip()}")
        return "\n".join(lines)


LIMIT_MESSAGES = {
    "wall_time": "Error: the code ran past its wall-clock limit and was stopped.",
    "cpu_time": "Error: the code used up its CPU time limit and was killed.",
    "memory": "Error: the code ran out of memory (the sandbox's memory limit).",
    "output": "Error: the code printed more than the output limit; the output was cut and the code stopped.",
    "processes": "Error: the code hit the sandbox's process limit (no more processes or threads could start).",
}


class PythonSandbox:
    """Runs Python code in a sandbox (see the module docstring). One instance may run many codes
    at once; each run gets its own directory, uid and namespaces.

    Raises:
        SandboxError: from :meth:`run` when ``unshare`` or ``setpriv`` is missing.
    """

    _slots = itertools.count()

    def __init__(self, limits: SandboxLimits = SandboxLimits()) -> None:
        self.limits = limits

    async def run(self, code: str) -> SandboxResult:
        """Run ``code`` (as ``main.py``); never raises for what the code does."""
        root = os.geteuid() == 0
        uid = UID_BASE + next(self._slots) % MAX_SLOTS if root else None
        workdir = await asyncio.to_thread(_workdir, code, uid)
        try:
            return await self._run_in(workdir, uid, root)
        finally:
            await asyncio.to_thread(shutil.rmtree, workdir, True)

    async def _run_in(self, workdir: Path, uid: int | None, root: bool) -> SandboxResult:
        started = time.perf_counter()
        status_read, status_write = os.pipe()
        try:
            proc = await self._spawn(workdir, uid, root, status_write)
            os.close(status_write)
            limit, (stdout, stderr) = await self._collect(proc)
            status = os.read(status_read, 64).decode()  # every writer has exited: never blocks
        finally:
            os.close(status_read)
        exit_code = int(status) if status and limit != "wall_time" else None
        limit = limit or _limit_of(exit_code, stderr)
        return SandboxResult(exit_code, stdout, stderr, limit, time.perf_counter() - started)

    async def _spawn(self, workdir: Path, uid: int | None, root: bool, status_fd: int) -> asyncio.subprocess.Process:
        for tool in ("unshare", "setpriv"):
            if shutil.which(tool) is None:
                raise SandboxError(f"the Python sandbox needs {tool} (util-linux), which is not on PATH")
        spec = {"workdir": str(workdir), "uid": uid, "python": sys.executable, "keep": _kept_under_root(), "status_fd": status_fd,
                "limits": {k: v for k, v in asdict(self.limits).items() if k in ("cpu_s", "memory_mb", "processes", "file_size_mb")}}
        namespaces = ["--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
        user = [] if root else ["--user", "--map-root-user"]
        return await asyncio.create_subprocess_exec("unshare", *user, *namespaces, "--", sys.executable, "-I", str(JAIL), json.dumps(spec),
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    start_new_session=True, pass_fds=(status_fd,))

    async def _collect(self, proc: asyncio.subprocess.Process) -> tuple[str | None, tuple[str, str]]:
        """Read both outputs up to the cap and wait, within the wall-clock limit; kill on a limit."""
        assert proc.stdout is not None and proc.stderr is not None
        cap, over = self.limits.output_bytes, asyncio.Event()
        reads = [asyncio.create_task(_read_capped(stream, cap, over)) for stream in (proc.stdout, proc.stderr)]
        waiter = asyncio.create_task(proc.wait())
        stop = asyncio.create_task(over.wait())
        done, _ = await asyncio.wait({waiter, stop}, timeout=self.limits.wall_s, return_when=asyncio.FIRST_COMPLETED)
        limit = None if waiter in done else ("output" if stop in done else "wall_time")
        if limit is not None:
            _kill(proc)
        await asyncio.wait_for(proc.wait(), 10)  # SIGKILLed: returns at once
        stop.cancel()
        outputs = await asyncio.wait_for(asyncio.gather(*reads), 10)
        return limit, (outputs[0], outputs[1])


async def _read_capped(stream: asyncio.StreamReader, cap: int, over: asyncio.Event) -> str:
    """The stream's text up to ``cap`` bytes (then a marker); sets ``over`` when it goes past."""
    data = bytearray()
    while chunk := await stream.read(65536):
        if len(data) < cap:
            data += chunk
        if len(data) > cap:
            over.set()
    text = bytes(data[:cap]).decode(errors="replace")
    return text + f"\n[... output cut at {cap} bytes]" if len(data) > cap else text


def _workdir(code: str, uid: int | None) -> Path:
    """A fresh directory holding ``main.py``, owned by ``uid`` when given (blocking)."""
    workdir = Path(tempfile.mkdtemp(prefix="agentrl-sandbox-"))
    (workdir / "main.py").write_text(code)
    if uid is not None:
        for path in (workdir, workdir / "main.py"):
            os.chown(path, uid, uid)
    return workdir


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the sandbox: ``unshare --kill-child`` takes the namespace's processes with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _limit_of(exit_code: int | None, stderr: str) -> str | None:
    """The limit the code's end shows: a CPU-time signal, a MemoryError, a refused fork."""
    if "MemoryError" in stderr:
        return "memory"
    if exit_code in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu_time"
    if "BlockingIOError" in stderr or "Resource temporarily unavailable" in stderr:
        return "processes"
    return None


def _kept_under_root() -> list[str]:
    """The Python installation's directories under /root, which stay visible when it is hidden."""
    return sorted({p for p in (sys.base_prefix, sys.prefix) if p.startswith("/root/")})
