"""Blocking calls off the event loop, on one daemon thread that can never hold the process.

A collective on the weight-update group (joining it, a broadcast) blocks until every rank takes
part, for as long as the group's timeout (minutes) when a peer never comes. A
``ThreadPoolExecutor`` would run it off the event loop, but Python joins executor threads at
exit, so such a call keeps ``agentrl serve`` alive after SIGTERM until it times out.
:class:`DaemonWorker` runs the calls in order on a daemon thread instead: :meth:`fail_waiting`
releases the coroutines awaiting them at once (the server is stopping), and a call still blocked
at exit is abandoned with the process.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[[], Any], asyncio.Future[Any]]


class DaemonWorker:
    """Runs blocking calls one at a time, in order, on a daemon thread named ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._waiting: set[asyncio.Future[Any]] = set()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def run(self, call: Callable[[], T]) -> T:
        """``call()``'s result (or exception), computed on the worker thread.

        Raises:
            RuntimeError: the worker is closed.
        """
        if self._closed:
            raise RuntimeError(f"DaemonWorker {self.name!r} is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiting.add(future)
        self._calls.put((call, future))
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        try:
            return await future
        finally:
            self._waiting.discard(future)

    def fail_waiting(self, error: Exception) -> None:
        """Raise ``error`` in every coroutine awaiting a call now; the calls themselves run on
        (or stay blocked) on the thread, their results dropped."""
        for future in self._waiting:
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        """Let the thread exit after the calls queued so far; later :meth:`run` calls raise.
        Never waits for the thread. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._calls.put(None)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            _run_one(*item)
            del item  # an idle thread holds nothing (a process group kept alive past exit aborts it)


def _run_one(call: Callable[[], Any], future: asyncio.Future[Any]) -> None:
    try:
        result = call()
    except Exception as e:
        _settle_threadsafe(future, None, e)
    else:
        _settle_threadsafe(future, result, None)


def _settle_threadsafe(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    try:
        future.get_loop().call_soon_threadsafe(_settle, future, result, error)
    except RuntimeError:  # its event loop is closed: nobody waits for this result
        pass


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.done():  # failed by fail_waiting, or its awaiter was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)
