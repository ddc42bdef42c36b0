"""Inference engines as processes: real SGLang or ``agentrl serve``, launched or attached by URL.

An :class:`EngineSpec` says how to launch one engine: ``python -m sglang.launch_server`` or
``agentrl serve`` (the same flag names), with the server's own options passed through as a dict
(slime's ``--sglang-*`` convention; :mod:`agentrl.engines.flags`). A :class:`LaunchedEngine`
runs it on its own port, logging to ``RUN_DIR/NAME.log``, and counts it started once
``/health_generate`` answers 200; an engine that exits first or does not get there within the
timeout is killed and reported with its command and the tail of its log. An
:class:`ExternalEngine` is one somebody else runs: it is only health-checked.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from agentrl.engines.flags import to_flags
from agentrl.engines.health import NotHealthy, start_healthy, wait_healthy
from agentrl.engines.process import ManagedProcess, ProcessOwner, free_port
from agentrl.errors import ConfigError, PolicyError

BACKENDS: dict[str, tuple[str, ...]] = {
    "sglang": ("-m", "sglang.launch_server"),
    "agentrl": ("-m", "agentrl.cli", "serve"),
}
"""The module each backend runs, after ``python``; both take SGLang's flag names."""

SET_BY_LAUNCHER = ("model_path", "host", "port")


class EngineLaunchError(PolicyError):
    """An engine did not start: it could not be run, exited, or never answered healthy in time."""


@dataclass(frozen=True)
class EngineSpec:
    """How to launch one engine.

    Attributes:
        model_path: the model, as the backend takes it (a directory; ``agentrl serve`` also
            takes built-in names such as ``smollm2-135m``).
        backend: ``"sglang"`` (``python -m sglang.launch_server``) or ``"agentrl"`` (``agentrl serve``).
        server_args: the server's own options under SGLang's ``ServerArgs`` names, e.g.
            ``{"mem_fraction_static": 0.8, "tp_size": 2}``; see :func:`~agentrl.engines.flags.to_flags`.
            ``model_path``, ``host`` and ``port`` are this spec's fields, not options.
        env: environment variables for the engine, e.g. ``{"CUDA_VISIBLE_DEVICES": "1"}``.
        launcher: a command the engine runs under, e.g. ``("numactl", "--cpunodebind=0")``.
        host: the interface it binds; its URL uses 127.0.0.1 for a wildcard (``0.0.0.0``).
        port: its port; ``None`` takes a free one at each launch that follows a failed one,
            and keeps it across restarts otherwise.
        python: the interpreter that runs the backend's module.
        name: what logs and errors call it; ``None``: ``engine-<index in the fleet>``.
    """

    model_path: str
    backend: str = "agentrl"
    server_args: Mapping[str, Any] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    launcher: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int | None = None
    python: str = sys.executable
    name: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"EngineSpec.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not self.model_path:
            raise ConfigError("EngineSpec.model_path must name a model, got ''")
        if self.port is not None and not 0 < self.port < 65536:
            raise ConfigError(f"EngineSpec.port must lie in [1, 65535] or be None (a free port), got {self.port}")
        taken = [k for k in self.server_args if str(k).replace("-", "_") in SET_BY_LAUNCHER]
        if taken:
            raise ConfigError(f"EngineSpec.server_args: {', '.join(taken)} set by the launcher; use EngineSpec.model_path/host/port")
        to_flags(self.server_args, field="EngineSpec.server_args")  # refuses bad names now, not at launch

    def command(self, port: int) -> list[str]:
        """The argv that launches this engine on ``port``."""
        return [*self.launcher, self.python, *BACKENDS[self.backend], "--model-path", self.model_path,
                "--host", self.host, "--port", str(port), *to_flags(self.server_args, field="EngineSpec.server_args")]


def url_of(host: str, port: int) -> str:
    """The URL a client on this machine reaches a server bound to ``host:port`` at."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Engine(Protocol):
    """What :class:`~agentrl.engines.fleet.EngineFleet` needs of an engine: a launched process
    (:class:`LaunchedEngine`), one on a Ray node (:class:`agentrl.launch.ray_engines.ActorEngine`),
    or somebody else's server (:class:`ExternalEngine`).

    Attributes:
        name: what logs and errors call it.
        url: where it serves (after its first start).
        launched: whether this side started it, and so may stop, kill and relaunch it.
        launches: how many times it was started (relaunches count).
    """

    name: str
    launched: bool
    launches: int

    @property
    def url(self) -> str: ...

    async def start(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """(Re)start it and wait until ``/health_generate`` answers; raise :class:`EngineLaunchError` if not."""

    def exit_status(self) -> int | str | None:
        """Why it is gone, without waiting (an exit status, or a reason), or ``None`` while it runs
        (and always for an engine this side did not start)."""

    async def stop(self, grace_s: float) -> bool:
        """SIGTERM, ``grace_s`` to exit, then SIGKILL; whether it is gone."""

    async def kill(self) -> bool:
        """SIGKILL it and wait, bounded; whether it is gone."""

    def kill_now(self) -> None:
        """SIGKILL it without waiting."""


class LaunchedEngine(ProcessOwner):
    """An engine this process launches from ``spec``, and relaunches after a failure.

    Args:
        spec: how to launch it.
        name: its name in logs and errors (``spec.name`` wins when set).
        run_dir: where its log goes (``run_dir/NAME.log``, appended to by every launch).
    """

    launched = True

    def __init__(self, spec: EngineSpec, name: str, run_dir: Path) -> None:
        self.spec, self.name = spec, spec.name or name
        self.log_path = run_dir / f"{self.name}.log"
        self.launches = 0
        self.process: ManagedProcess | None = None
        self._port = spec.port

    def exit_status(self) -> int | None:
        """The exit status of its process once it exited, else ``None``."""
        return self.process.returncode if self.process is not None else None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError(f"engine {self.name} has no URL before its first launch")
        return url_of(self.spec.host, self._port)

    async def start(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """Launch it and wait until it is healthy; on a failure, or if cancelled, kill it first.

        Raises:
            EngineLaunchError: it could not be run, exited, or was not healthy within ``timeout_s``;
                the message names the engine, its command and the tail of its log.
        """
        if self._port is None:
            self._port = free_port(self.spec.host)
        self.process = process = ManagedProcess(self.name, self.spec.command(self._port), self.log_path, self.spec.env)
        self.launches += 1
        try:
            await start_healthy(process, session, self.url, timeout_s)
        except (NotHealthy, OSError) as e:
            url, self._port = self.url, self.spec.port  # a fresh port next time, in case this one was the problem
            raise EngineLaunchError(f"engine {self.name} ({url}) {e}\n{process.describe()}") from None


class ExternalEngine:
    """An engine somebody else runs at ``url``: attached by address, health-checked, never signalled."""

    launched = False
    launches = 1

    def exit_status(self) -> None:
        """Nothing: this side did not start it (health checks tell whether it serves)."""
        return None

    def __init__(self, url: str, name: str) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"an external engine is an http(s):// URL, got {url!r}")
        self.url, self.name = url.rstrip("/"), name

    async def start(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """Wait until it is healthy.

        Raises:
            EngineLaunchError: it was not healthy within ``timeout_s``.
        """
        try:
            await wait_healthy(session, self.url, timeout_s)
        except NotHealthy as e:
            raise EngineLaunchError(f"external engine {self.name} at {self.url} {e}") from None

    async def stop(self, grace_s: float) -> bool:
        """Nothing: this side did not start it."""
        return True

    async def kill(self) -> bool:
        """Nothing: this side did not start it."""
        return True

    def kill_now(self) -> None:
        """Nothing: this side did not start it."""

