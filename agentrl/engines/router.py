"""sglang-router as a process, and its worker registry (sglang-router >= 0.3, and SMG).

:class:`RouterProcess` runs ``python -m sglang_router.launch_router`` with the router's own
options passed through as a dict (slime's ``--router-*`` convention; ``{"policy":
"round_robin"}`` -> ``--policy round_robin``), logging to ``RUN_DIR/router.log``, and counts it
started once ``GET /health`` answers 200.

:class:`RouterClient` adds and removes workers at run time. Facts it relies on (read from
sglang-router 0.3.2 and checked against the real router in tests/engines): ``POST /workers``
with ``{"url": ...}`` answers 202 and adds the worker in the background (a second POST of a
listed URL changes nothing); ``GET /workers`` answers ``{"workers": [{"id", "url",
"is_healthy", ...}], ...}``; ``DELETE /workers/{id}`` takes the worker's UUID (a URL is refused
with 400) and answers 202, or 404 for an unknown id. The legacy ``/add_worker`` and
``/remove_worker`` routes of routers <= 0.2 are gone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import aiohttp

from agentrl.engines.flags import to_flags
from agentrl.engines.health import NotHealthy, start_healthy
from agentrl.engines.launch import url_of
from agentrl.engines.process import ManagedProcess, ProcessOwner, free_port
from agentrl.errors import ConfigError, PolicyError
from agentrl.serving.engine_client import EngineControlClient, EngineRequestError

SET_BY_LAUNCHER = ("host", "port", "worker_urls")


class RouterError(PolicyError):
    """The router did not start, or did not add or remove a worker in time."""


@dataclass(frozen=True)
class RouterSpec:
    """How to launch sglang-router.

    Attributes:
        router_args: the router's own options under ``RouterArgs`` names, e.g.
            ``{"policy": "cache_aware", "cache_threshold": 0.5}``; see
            :func:`~agentrl.engines.flags.to_flags`. ``host`` and ``port`` are this spec's
            fields; workers are registered at run time, not through ``worker_urls``.
        host: the interface it and its Prometheus exporter bind; its URL uses 127.0.0.1 for a wildcard.
        port: its port; ``None`` takes a free one.
        python: the interpreter that runs ``sglang_router.launch_router``.
    """

    router_args: Mapping[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    python: str = sys.executable

    def __post_init__(self) -> None:
        taken = [k for k in self.router_args if str(k).replace("-", "_") in SET_BY_LAUNCHER]
        if taken:
            raise ConfigError(f"RouterSpec.router_args: {', '.join(taken)} set by the launcher; use RouterSpec.host/port "
                              "(workers are registered at run time)")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"RouterSpec.port must lie in [1, 65535] or be None (a free port), got {self.port}")
        to_flags(self.router_args, field="RouterSpec.router_args")

    def command(self, port: int) -> list[str]:
        """The argv that launches the router on ``port``. Unless ``router_args`` names them, its
        Prometheus exporter binds the router's host (the router's default is every interface)
        and gets a free port (the default, 29000, is taken by any other router on the host, and
        the router then exits at start)."""
        args = dict(self.router_args)
        named = {str(k).replace("-", "_") for k in args}
        if "prometheus_port" not in named:
            args["prometheus_port"] = free_port(self.host)
        if "prometheus_host" not in named:
            args["prometheus_host"] = self.host
        return [self.python, "-m", "sglang_router.launch_router", "--host", self.host, "--port", str(port),
                *to_flags(args, field="RouterSpec.router_args")]


class RouterProcess(ProcessOwner):
    """sglang-router launched from ``spec``; logs to ``run_dir/router.log``; relaunchable on the same port."""

    name = "router"

    def __init__(self, spec: RouterSpec, run_dir: Path) -> None:
        self.spec, self.log_path = spec, run_dir / "router.log"
        self.port = spec.port or free_port(spec.host)
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return url_of(self.spec.host, self.port)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    async def start(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """Launch it and wait for ``GET /health``; on a failure, or if cancelled, kill it first.

        Raises:
            RouterError: it could not be run, exited, or did not answer within ``timeout_s``.
        """
        self.process = process = ManagedProcess("router", self.spec.command(self.port), self.log_path)
        try:
            await start_healthy(process, session, self.url, timeout_s, path="/health")
        except (NotHealthy, OSError) as e:
            raise RouterError(f"sglang-router ({self.url}) {e}\n{process.describe()}") from None


class RouterClient:
    """The worker registry of the router at ``url``. Use ``async with`` or call :meth:`aclose`.

    Calls follow agentrl's one retry policy (:class:`~agentrl.serving.engine_client.EngineControlClient`).

    Args:
        url: the router's base URL.
        timeout_s: limit on one HTTP request.
        poll_s: how often :meth:`register` and :meth:`remove` look whether the change happened.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        self.url, self.poll_s = url.rstrip("/"), poll_s
        self._http = EngineControlClient(self.url, timeout_s=timeout_s)

    async def workers(self) -> list[dict[str, Any]]:
        """The router's workers: dicts with at least ``id``, ``url`` and ``is_healthy``.

        Raises:
            RouterError: the router failed or answered something else than a worker list.
        """
        _, reply = await self._request("GET", "/workers")
        if not isinstance(reply, dict) or not isinstance(reply.get("workers"), list):
            raise RouterError(f"sglang-router at {self.url}: GET /workers answered {reply!r:.300}, expected {{'workers': [...]}}; "
                              "is it sglang-router >= 0.3?")
        return cast(list[dict[str, Any]], reply["workers"])

    async def register(self, worker_url: str, timeout_s: float) -> None:
        """Add ``worker_url`` and return once the router lists it as healthy.

        Raises:
            RouterError: the router refused it, or did not list it healthy within ``timeout_s``
                (the router's log says why: it could not reach the worker, or found no model).
        """
        worker_url = worker_url.rstrip("/")
        _, reply = await self._request("POST", "/workers", {"url": worker_url})
        deadline = time.monotonic() + timeout_s
        while not any(w.get("url") == worker_url and w.get("is_healthy") for w in await self.workers()):
            if time.monotonic() > deadline:
                raise RouterError(f"sglang-router at {self.url} did not list {worker_url} as a healthy worker within {timeout_s:g}s "
                                  f"(POST /workers answered {reply!r:.300}); its log says why")
            await asyncio.sleep(self.poll_s)

    async def remove(self, worker_url: str, timeout_s: float) -> None:
        """Remove every entry for ``worker_url``; return once the router no longer lists it (at once if it never did).

        Raises:
            RouterError: the router refused, or still listed it after ``timeout_s``.
        """
        worker_url = worker_url.rstrip("/")
        deadline, deleted = time.monotonic() + timeout_s, set[str]()
        while ids := [w["id"] for w in await self.workers() if w.get("url") == worker_url]:
            for worker_id in set(ids) - deleted:
                await self._request("DELETE", f"/workers/{worker_id}", ok=(404,))  # 404: gone meanwhile
                deleted.add(worker_id)
            if time.monotonic() > deadline:
                raise RouterError(f"sglang-router at {self.url} still lists {worker_url} {timeout_s:g}s after DELETE /workers/{ids[0]}")
            await asyncio.sleep(self.poll_s)

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *, ok: tuple[int, ...] = ()) -> tuple[int, Any]:
        try:
            status, reply = await self._http.request(method, path, body)
        except EngineRequestError as e:
            raise RouterError(f"sglang-router: {e}") from e
        if status >= 400 and status not in ok:
            raise RouterError(f"sglang-router refused {method} {self.url}{path} {body or ''}: HTTP {status} {reply!r:.300}")
        return status, reply

    async def aclose(self) -> None:
        """Close the HTTP session; safe to call twice."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
