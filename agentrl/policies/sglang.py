"""A :class:`~agentrl.policies.base.Policy` served by SGLang engines over SGLang's native HTTP API.

:class:`SGLangPolicy` posts ``/generate`` with token ids and reads the sampled ids and log-probs
back (wire format: :mod:`agentrl.policies.sglang_protocol`). It owns one aiohttp session: use it
as ``async with SGLangPolicy(url) as policy: ...`` or call :meth:`~SGLangPolicy.aclose`.

Routing and episode affinity (an episode's turns share a growing prefix; one engine keeps it cached):

* Every request names its episode by an *episode key*: its rid up to the last ``":"`` (the rollout
  runner's rids are ``"<task>-<sample>-<episode>:<turn>"``); a rid without ``":"`` is its own key.
* One URL: a router (sglang-router / SMG) or a single engine. Each request carries the header
  ``X-SMG-Routing-Key: <episode key>``. A router launched with ``--policy manual`` pins each key
  to one healthy worker (SMG's ``consistent_hashing`` too). Under ``cache_aware`` (the router's
  default) the header is ignored and a request goes to the worker whose cached prefix of it is
  longest: for a multi-turn episode that is the worker of its previous turn, unless the load is
  imbalanced beyond both ``balance_abs_threshold`` and ``balance_rel_threshold`` (then the least
  loaded worker). ``round_robin``, ``random`` and ``power_of_two`` give no affinity.
* Several URLs: engines addressed directly. An episode goes to the engine that ranks first for
  its key by rendezvous hashing among the healthy engines, so it stays on one engine while that
  engine is healthy, and only the episodes of a failed engine move. An engine that failed a
  request is left out for ``unhealthy_s`` seconds.

Failures: connection errors, timeouts, 429 and 5xx are retried (capped exponential backoff with
jitter, on the episode's engine among the healthy ones, so on another engine when several are
given), each retry under a fresh rid (``<rid>~<attempt>``) because the engine may still hold the
old one. A connection lost mid-request is such a fault: the request is retried or, after
``attempts`` tries, raises :class:`~agentrl.errors.PolicyError`; a partial generation is never
returned as complete. Any other 4xx, and a malformed answer, raise ``PolicyError`` at once with the
server's reason. A cancelled :meth:`~SGLangPolicy.generate` posts an abort for its request before it
re-raises, so the engine does not keep generating for nobody (best effort, as :meth:`~SGLangPolicy.abort`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Self

import aiohttp

from agentrl.errors import ConfigError, PolicyError
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.policies.sglang_protocol import (
    error_reason,
    parse_generation,
    request_body,
)

log = logging.getLogger(__name__)

ROUTING_KEY_HEADER = "X-SMG-Routing-Key"
"""The header sglang-router / SMG read a session's routing key from (``manual`` policy)."""


class ClientState(enum.Enum):
    """``OPEN`` accepts requests (the HTTP session starts on the first); ``CLOSED`` is final."""

    OPEN = "open"
    CLOSED = "closed"


def episode_key(rid: str) -> str:
    """The episode a request belongs to: ``rid`` up to its last ``":"`` (all of it if none)."""
    head, sep, _ = rid.rpartition(":")
    return head if sep else rid


@dataclass
class _InFlight:
    """Where request ``rid`` is now: the engine URL and the rid it was sent under."""

    url: str
    wire_rid: str
    aborted: bool = False


class _Transient(Exception):
    """A fault worth retrying (connection lost or refused, timeout, 429, 5xx)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class SGLangPolicy(Policy):
    """Samples from SGLang engines over HTTP (see the module docstring for routing and failures).

    Args:
        urls: a router URL, or one or more engine URLs (``http://host:port``).
        max_concurrency: most ``/generate`` requests in flight at once, over all engines.
        timeout_s: limit on one ``/generate`` attempt, from connecting to the last byte.
        connect_timeout_s: limit on opening a connection.
        attempts: tries per request, the first included.
        backoff_s: wait before the second try; doubles on each further try, up to
            ``max_backoff_s``, each wait scaled by a random factor in [0.5, 1].
        unhealthy_s: how long an engine that failed a request is skipped (several URLs only).
    """

    def __init__(
        self, urls: str | Sequence[str], *, max_concurrency: int = 256, timeout_s: float = 600.0, connect_timeout_s: float = 10.0,
        attempts: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 8.0, unhealthy_s: float = 10.0,
    ) -> None:
        self._urls = [u.rstrip("/") for u in ([urls] if isinstance(urls, str) else urls)]
        if not self._urls or not all(u.startswith(("http://", "https://")) for u in self._urls):
            raise ConfigError(f"urls must be one or more http(s):// URLs, got {urls!r}")
        for name, count in (("max_concurrency", max_concurrency), ("attempts", attempts)):
            if count < 1:
                raise ConfigError(f"{name} must be >= 1, got {count}")
        for name, seconds in (("timeout_s", timeout_s), ("connect_timeout_s", connect_timeout_s)):
            if not seconds > 0:
                raise ConfigError(f"{name} must be > 0, got {seconds}")
        self.attempts, self.backoff_s, self.max_backoff_s, self.unhealthy_s = attempts, backoff_s, max_backoff_s, unhealthy_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._session: aiohttp.ClientSession | None = None
        self._state = ClientState.OPEN
        self._down_until: dict[str, float] = {}
        self._in_flight: dict[str, _InFlight] = {}
        self._weight_version = 0

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def weight_version(self) -> int:
        """The weight version the latest answer reported (0 before any answer reports one)."""
        return self._weight_version

    def route(self, rid: str) -> str:
        """The URL a request with ``rid`` would go to now (its episode's engine, or the router)."""
        return self._pick(episode_key(rid))

    async def generate(self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None) -> Generation:
        """See :meth:`Policy.generate`. ``rid`` defaults to a fresh unique id (no affinity).

        Raises:
            PolicyError: every attempt failed, a 4xx came back, or the answer broke the protocol.
            ValueError: ``rid`` is already in flight on this client.
            RuntimeError: the client is closed.
        """
        self._check_open()
        rid = rid if rid is not None else f"agentrl-{uuid.uuid4().hex}"
        if rid in self._in_flight:
            raise ValueError(f"rid {rid!r} is already in flight; request ids must be unique among requests in flight")
        body, key = request_body(input_ids, sampling, rid), episode_key(rid)
        flight = self._in_flight[rid] = _InFlight(self._pick(key), rid)
        try:
            for attempt in range(1, self.attempts + 1):
                if flight.aborted:  # aborted between attempts: no engine holds it
                    return Generation([], [], "abort", self._weight_version)
                flight.url, flight.wire_rid = self._pick(key), rid if attempt == 1 else f"{rid}~{attempt}"
                try:
                    reply = await self._post_generate(flight.url, body | {"rid": flight.wire_rid}, key)
                except _Transient as e:
                    await self._after_failure(flight, e, attempt)
                    continue
                except asyncio.CancelledError:  # the engine would run on for nobody: abort it there
                    await self._post_abort(flight.url, flight.wire_rid)
                    raise
                generation, newest = parse_generation(reply, stop=sampling.stop)
                if newest is not None:
                    self._weight_version = newest
                return generation
        finally:
            del self._in_flight[rid]
        raise AssertionError("unreachable")

    async def abort(self, rid: str) -> bool:
        """Abort request ``rid`` (see :meth:`Policy.abort`): its :meth:`generate` returns
        ``finish_reason="abort"`` with the tokens sampled so far. Returns whether ``rid`` was in
        flight on this client.

        Posts ``/abort_request`` to the engine holding it; through a router (which has no such
        route) to every worker it lists at ``GET /workers``. SGLang aborts every request whose rid
        *starts with* the one given. Best effort: a request the engine has not received yet runs
        on, and a failure to reach the engine is logged, not raised.
        """
        self._check_open()
        flight = self._in_flight.get(rid)
        if flight is None:
            return False
        flight.aborted = True
        await self._post_abort(flight.url, flight.wire_rid)
        return True

    async def aclose(self) -> None:
        """Close the HTTP session; requests still in flight fail with ``PolicyError``. Safe twice."""
        self._state = ClientState.CLOSED
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        self._check_open()
        return self

    # --- machinery ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is ClientState.CLOSED:
            raise RuntimeError("SGLangPolicy is closed; create a new one")

    def _http(self) -> aiohttp.ClientSession:
        if self._state is ClientState.CLOSED:
            raise PolicyError("SGLangPolicy was closed while the request was in flight")
        if self._session is None:  # created on the running loop; no connection cap (the semaphore caps /generate)
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _pick(self, key: str) -> str:
        """Rendezvous hashing of ``key`` over the healthy engines (all, if none is healthy)."""
        if len(self._urls) == 1:
            return self._urls[0]
        now = time.monotonic()
        healthy = [u for u in self._urls if self._down_until.get(u, 0.0) <= now]
        return max(healthy or self._urls, key=lambda url: _rank(key, url))

    async def _post_generate(self, url: str, body: dict[str, Any], key: str) -> Any:
        """One attempt: the decoded 200 body; raises ``_Transient`` or ``PolicyError``."""
        async with self._slots:
            try:
                async with self._http().post(f"{url}/generate", json=body, headers={ROUTING_KEY_HEADER: key}) as response:
                    status, text = response.status, await response.text()
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
                raise _Transient(f"{type(e).__name__}: {e}", timed_out=isinstance(e, TimeoutError)) from e
        if status == 200:
            try:
                return json.loads(text)
            except ValueError as e:
                raise PolicyError(f"SGLang {url}/generate answered 200 with a body that is not JSON: {text[:200]!r}") from e
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}: {error_reason(text)}")
        raise PolicyError(f"SGLang {url}/generate answered HTTP {status}: {error_reason(text)}")

    async def _after_failure(self, flight: _InFlight, error: _Transient, attempt: int) -> None:
        """Mark the engine down, release what it may still run, and wait before the next try."""
        if len(self._urls) > 1:
            self._down_until[flight.url] = time.monotonic() + self.unhealthy_s
        if attempt == self.attempts:
            raise PolicyError(f"SGLang {flight.url}/generate failed {attempt} times, last: {error}") from error
        if error.timed_out:  # the engine may still be generating under this rid
            await self._post_abort(flight.url, flight.wire_rid)
        delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * random.uniform(0.5, 1.0)
        log.warning("SGLang %s/generate: %s; retrying in %.2fs (attempt %d/%d)", flight.url, error, delay, attempt, self.attempts)
        await asyncio.sleep(delay)

    async def _post_abort(self, url: str, wire_rid: str) -> None:
        try:
            status = await self._post_json(f"{url}/abort_request", {"rid": wire_rid})
            if status == 404:  # a router: abort on each of its workers
                async with self._http().get(f"{url}/workers", timeout=aiohttp.ClientTimeout(total=10)) as response:
                    workers = (await response.json(content_type=None)).get("workers", [])
                for worker in workers:
                    await self._post_json(f"{worker['url'].rstrip('/')}/abort_request", {"rid": wire_rid})
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError, KeyError, TypeError, PolicyError) as e:
            log.warning("could not abort request %s at %s: %s: %s", wire_rid, url, type(e).__name__, e)

    async def _post_json(self, url: str, body: dict[str, Any]) -> int:
        async with self._http().post(url, json=body, timeout=aiohttp.ClientTimeout(total=10)) as response:
            if response.status >= 400 and response.status != 404:
                log.warning("%s answered HTTP %d: %s", url, response.status, error_reason(await response.text()))
            return response.status


def _rank(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest(), "big")
