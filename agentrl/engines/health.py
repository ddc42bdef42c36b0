"""Health checks of an SGLang-compatible server: one probe, and waiting for the first good one.

An engine is healthy when ``GET /health_generate`` answers 200: SGLang (and ``agentrl serve``)
run a one-token generation to answer it, so a 200 means the model really generates.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import aiohttp

from agentrl.engines.process import ManagedProcess

HEALTH_PATH = "/health_generate"


class Watched(Protocol):
    """A server's process as a health wait watches it (a local :class:`ManagedProcess`, or one
    run by a Ray actor)."""

    @property
    def alive(self) -> bool: ...

    @property
    def returncode(self) -> int | str | None: ...


class NotHealthy(Exception):
    """A server did not become healthy; the message says why (exit status, last probe failure)."""


async def probe(session: aiohttp.ClientSession, url: str, timeout_s: float, path: str = HEALTH_PATH) -> str | None:
    """``None`` if ``GET url+path`` answers 200 within ``timeout_s``; else why not, in one line."""
    try:
        async with session.get(url + path, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status == 200:
                return None
            return f"{path} answered HTTP {response.status}: {(await response.text()).strip()[:200]}"
    except TimeoutError:
        return f"{path} did not answer within {timeout_s:g}s"
    except aiohttp.ClientError as e:
        return f"{path} failed: {type(e).__name__}: {str(e)[:200]}"


async def wait_healthy(session: aiohttp.ClientSession, url: str, timeout_s: float, *, process: Watched | None = None,
                       path: str = HEALTH_PATH, interval_s: float = 0.25) -> None:
    """Return once ``url`` is healthy.

    Raises:
        NotHealthy: ``process`` (the server's, if this side launched it) exited first, or
            ``timeout_s`` passed; the message gives the exit status or the last probe's failure.
    """
    deadline = time.monotonic() + timeout_s
    reason = "no probe finished"
    while True:
        if process is not None and not process.alive:
            raise NotHealthy(f"exited with status {process.returncode} before {path} answered 200 (last probe: {reason})")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NotHealthy(f"did not answer {path} with 200 within {timeout_s:g}s (last probe: {reason})")
        reason = await probe(session, url, remaining, path) or ""
        if not reason:
            return
        await asyncio.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))


async def start_healthy(process: ManagedProcess, session: aiohttp.ClientSession, url: str, timeout_s: float, *,
                        path: str = HEALTH_PATH) -> None:
    """Start ``process`` and return once ``url`` is healthy; on any failure, or if cancelled,
    kill it first.

    Raises:
        NotHealthy: as :func:`wait_healthy`.
        OSError: the process could not be started.
    """
    try:
        process.start()
        await wait_healthy(session, url, timeout_s, process=process, path=path)
    except BaseException:
        await process.kill()  # SIGKILL goes out before its first await: also when cancelled again
        raise
