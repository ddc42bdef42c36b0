"""Stopping a run on SIGINT or SIGTERM (what Ctrl-C, Slurm, Kubernetes and systemd send).

:func:`run_until_signalled` runs the job's main coroutine with both signals turned into a
cancellation of it: its ``async with`` blocks unwind, so launched engines and the router are
stopped (SIGTERM, a grace period, SIGKILL), and :class:`Interrupted` tells the caller which
signal came. A second signal does not wait for that cleanup: every process agentrl launched is
SIGKILLed at once (:func:`agentrl.engines.process.kill_started_processes`) and the process exits.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from agentrl.engines.process import kill_started_processes
from agentrl.errors import AgentRLError

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(AgentRLError):
    """The run was stopped by a signal; the process should exit with :attr:`exit_code`."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # what shells report for a process ended by the signal


async def run_until_signalled(main: Coroutine[Any, Any, T]) -> T:
    """Await ``main``; on SIGINT or SIGTERM cancel it and raise :class:`Interrupted` once its
    cleanup has run (the message names the signal; callers add where to resume).

    Must run in the main thread (signal handlers are installed on the running loop).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    received: list[int] = []

    def on_signal(signum: int) -> None:
        if received:  # the second signal: no more waiting on cleanup
            left = kill_started_processes(timeout_s=5.0)
            os.write(2, f"agentrl: {signal.Signals(signum).name} again: killed launched processes{'; still running: ' + ', '.join(left) if left else ''}\n".encode())
            os._exit(128 + signum)
        received.append(signum)
        os.write(2, f"agentrl: {signal.Signals(signum).name} received: stopping (engines and router are being shut down; send it again to kill them now)\n".encode())
        task.cancel()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await task
    except asyncio.CancelledError:
        if not received:
            raise
        raise Interrupted(f"interrupted by {signal.Signals(received[0]).name}", received[0]) from None
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
