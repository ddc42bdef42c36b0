"""A client for the control and weight endpoints of one engine (``agentrl serve`` or SGLang).

Used by the trainer's weight sync (:mod:`agentrl.engines.weight_sync`). Retries follow agentrl's
one policy: connection errors, timeouts, 429 and 5xx are retried with capped exponential backoff
and jitter (a warning names "attempt k/N"), a 4xx fails at once. Only idempotent calls retry:
joining a process group or sending tensors cannot be repeated without the other ranks.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from typing import Any, Self

import aiohttp

from agentrl.errors import PolicyError

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class EngineRequestError(PolicyError):
    """An engine refused a control or weight request, or could not be reached."""


class ClientState(enum.Enum):
    """``UNOPENED`` until the first call opens a session; ``CLOSED`` is final."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class EngineControlClient:
    """Calls one engine at ``url``. Use ``async with`` or call :meth:`aclose`.

    Args:
        url: the engine's base URL, e.g. ``http://127.0.0.1:30000``.
        timeout_s: per-request limit (weight loads of big models take a while).
        retries: attempts for an idempotent call that hits a transient fault.
    """

    def __init__(self, url: str, *, timeout_s: float = 300.0, retries: int = 3) -> None:
        self.url, self.retries = url.rstrip("/"), retries
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.state = ClientState.UNOPENED

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, idempotent: bool = True) -> Any:
        """The decoded reply of a 2xx answer (JSON if it parses, else text).

        Raises:
            EngineRequestError: a 4xx, a reply with ``"success": false``, or a transient fault
                that outlasted the retries.
        """
        status, payload = await self.request(method, path, body, idempotent=idempotent)
        if status >= 400 or (isinstance(payload, dict) and payload.get("success") is False):
            raise EngineRequestError(f"{self.url}{path} answered HTTP {status}: {_message(payload)}")
        return payload

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None, *, idempotent: bool = True) -> tuple[int, Any]:
        """``(status, decoded reply)`` of the first answer that is not a transient fault."""
        attempts = self.retries if idempotent else 1
        for attempt in range(1, attempts + 1):
            try:
                status, payload = await self._once(method, path, body)
                if status in RETRYABLE_STATUS:
                    raise _Transient(f"HTTP {status}: {_message(payload)}")
                return status, payload
            except (aiohttp.ClientConnectionError, TimeoutError, _Transient) as e:
                if attempt == attempts:
                    raise EngineRequestError(f"{self.url}{path} failed after {attempt} attempt(s): {e!r}") from e
                delay = min(2 ** (attempt - 1), 8) * (0.5 + random.random() / 2)
                log.warning("%s%s: %r; retrying in %.1fs (attempt %d/%d)", self.url, path, e, delay, attempt, attempts)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def server_info(self) -> dict[str, Any]:
        info = await self.call("GET", "/get_server_info")
        if not isinstance(info, dict):
            raise EngineRequestError(f"{self.url}/get_server_info answered {info!r:.200}, expected an object")
        return info

    async def weight_version(self) -> str:
        reply = await self.call("GET", "/get_weight_version")
        return str(reply["weight_version"])

    async def pause(self, mode: str) -> None:
        await self.call("POST", "/pause_generation", {"mode": mode})

    async def resume(self) -> None:
        await self.call("POST", "/continue_generation", {})

    async def flush_cache(self, wait_s: float) -> None:
        """Flush, retrying while the engine answers 400 (requests still running), up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            status, payload = await self.request("POST", "/flush_cache")
            if status < 400:
                return
            if status != 400 or time.monotonic() > deadline:
                raise EngineRequestError(f"{self.url}/flush_cache still answers HTTP {status} after {wait_s:.0f}s: {_message(payload)}")
            await asyncio.sleep(0.1)

    async def aclose(self) -> None:
        """Close the session; safe to call twice."""
        self.state = ClientState.CLOSED
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _once(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        if self.state is ClientState.CLOSED:
            raise RuntimeError(f"EngineControlClient for {self.url} is closed; create a new one")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self.state = ClientState.OPEN
        async with self._session.request(method, self.url + path, json=body) as response:
            text = await response.text()
        try:
            return response.status, json.loads(text)
        except ValueError:
            return response.status, text


class _Transient(Exception):
    pass


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        return str(payload.get("message") or (error.get("message") if isinstance(error, dict) else error) or payload)[:500]
    return str(payload).strip()[:500]
