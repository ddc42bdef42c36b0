"""ManagedProcess against real subprocesses: stopping one that ignores SIGTERM never stalls the
event loop, SIGKILLs it after its grace and says what it waited for; ``kill_started_processes``
kills everything this interpreter started, also from a signal handler."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from agentrl.engines.process import ManagedProcess, kill_started_processes
from tests.loop_probe import loop_probe

IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
STALL_LIMIT_S = 0.25  # the longest the loop may go without running another coroutine


def stubborn(tmp_path: Path, name: str) -> ManagedProcess:
    """A process that ignores SIGTERM (as an engine stuck in a GPU call does) and says when it does."""
    return ManagedProcess(name, [sys.executable, "-c", IGNORES_SIGTERM], tmp_path / f"{name}.log")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.05)


async def test_stopping_a_process_that_ignores_sigterm_keeps_the_loop_running_and_sigkills_it_after_its_grace(tmp_path, caplog):
    process = stubborn(tmp_path, "stubborn")
    process.start()
    try:
        await eventually(lambda: "\nready\n" in process.tail(), 30, "the SIGTERM trap installed")
        async with loop_probe() as watch:
            started = time.monotonic()
            assert await process.stop(1.0)
            elapsed = time.monotonic() - started
    finally:
        kill_started_processes(5)
    assert process.returncode == -signal.SIGKILL and pid_gone(process.pid)
    assert 1.0 <= elapsed < 4.0
    assert watch.worst < STALL_LIMIT_S, f"the event loop stalled for {watch.worst:.2f}s while the process was stopped"
    assert f"stubborn (pid {process.pid}) did not exit within 1s of SIGTERM; sending SIGKILL to its process group" in caplog.text
    assert await process.stop(1.0) and await process.kill()  # reaped: nothing left to do


async def test_kill_is_awaitable_and_bounded(tmp_path):
    process = stubborn(tmp_path, "killed")
    process.start()
    started = time.monotonic()
    assert await process.kill(wait_s=5.0)
    assert time.monotonic() - started < 5.0 and process.returncode == -signal.SIGKILL and pid_gone(process.pid)


def test_kill_started_processes_kills_every_managed_process(tmp_path):
    first, second = stubborn(tmp_path, "first"), stubborn(tmp_path, "second")
    first.start()
    second.start()
    pids = [first.pid, second.pid]
    assert not any(map(pid_gone, pids))
    started = time.monotonic()
    assert kill_started_processes(timeout_s=5.0) == []
    assert time.monotonic() - started < 5.0
    assert all(map(pid_gone, pids)) and first.returncode == second.returncode == -signal.SIGKILL
    assert kill_started_processes(timeout_s=5.0) == []  # nothing left: a second call is a no-op


IN_A_SIGNAL_HANDLER = """
import signal, sys, time
from pathlib import Path
from agentrl.engines.process import ManagedProcess, kill_started_processes

def on_sigterm(signum, frame):
    left = kill_started_processes(timeout_s=5.0)
    print("left:", left, flush=True)
    sys.exit(128 + signum)

signal.signal(signal.SIGTERM, on_sigterm)
children = [ManagedProcess(f"child-{i}", [sys.executable, "-c", "import time; time.sleep(600)"], Path(sys.argv[1]) / f"child-{i}.log")
            for i in range(2)]
for child in children:
    child.start()
print("pids", *(child.pid for child in children), flush=True)
time.sleep(600)
"""


def test_kill_started_processes_works_from_a_sigterm_handler_though_the_children_miss_the_group_signal(tmp_path):
    pids: list[int] = []
    with subprocess.Popen([sys.executable, "-c", IN_A_SIGNAL_HANDLER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                          start_new_session=True) as script:
        try:
            line = script.stdout.readline()
            assert line.startswith("pids "), line
            pids = [int(p) for p in line.split()[1:]]
            os.killpg(script.pid, signal.SIGTERM)  # what `kill -TERM -PGID` or a batch scheduler sends: it misses the children
            assert script.wait(timeout=30) == 128 + signal.SIGTERM
            assert script.stdout.read() == "left: []\n"
        finally:
            script.kill()
            for pid in pids:  # never leak a sleeper
                if not pid_gone(pid):
                    os.kill(pid, signal.SIGKILL)
    assert pids and all(map(pid_gone, pids))


def test_a_child_dies_with_the_process_that_started_it_even_under_sigkill(tmp_path):
    """No handler runs on SIGKILL (kill -9, Ray killing an actor): the kernel must kill the child."""
    marker = tmp_path / "child.pid"
    starter = (
        "import asyncio, sys, time\n"
        "from pathlib import Path\n"
        "from agentrl.engines.process import ManagedProcess\n"
        f"p = ManagedProcess('sleeper', [sys.executable, '-c', 'import time; time.sleep(600)'], Path({str(tmp_path / 'log')!r}))\n"
        "p.start()\n"
        f"Path({str(marker)!r}).write_text(str(p.pid))\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", starter])
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert parent.poll() is None and time.monotonic() < deadline, "the starter never started its child"
        time.sleep(0.05)
    child = int(marker.read_text())
    time.sleep(0.5)  # the guard has exec'd the command by now
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while not pid_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_gone(child), "the child outlived its SIGKILLed parent"
