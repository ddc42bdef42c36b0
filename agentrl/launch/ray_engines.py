"""Inference engines as Ray actors, each on its placement-group bundles.

An :class:`EngineActor` runs on an engine's first bundle and launches the server (``agentrl serve``
or SGLang, :class:`~agentrl.engines.launch.EngineSpec`'s command) as a child process on that
node, bound to the node's address, on the GPUs of all the engine's bundles. The child cannot
outlive the actor (:mod:`agentrl.engines.process`'s orphan guard): when Ray kills the actor (a job
stopped, a fault) the server goes too.

An :class:`ActorEngine` is the rollout manager's handle on one such engine: it implements the
fleet's :class:`~agentrl.engines.launch.Engine` protocol, so :class:`~agentrl.engines.fleet.EngineFleet`
health-checks, relaunches (a fresh actor on the same bundles) and stops it as it does a local
process.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from agentrl.engines.health import NotHealthy, wait_healthy
from agentrl.engines.launch import EngineLaunchError, EngineSpec, url_of
from agentrl.engines.process import ManagedProcess, free_port

CALL_TIMEOUT_S = 60.0
"""Bound on an actor call that only starts or signals a process."""


class EngineActor:
    """Runs one engine server as its child process (a Ray async actor; see the module docstring)."""

    def __init__(self) -> None:
        self.process: ManagedProcess | None = None

    async def launch(self, spec: EngineSpec, name: str, log_path: str, env: Mapping[str, str]) -> str:
        """Start ``spec``'s server on this node (a free port on the node's address); its URL."""
        import ray

        host = ray.util.get_node_ip_address()
        port = free_port(host)
        spec = dataclasses.replace(spec, host=host, port=port)
        self.process = ManagedProcess(name, spec.command(port), Path(log_path), {**spec.env, **env})
        self.process.start()
        return url_of(host, port)

    async def wait_exit(self, poll_s: float = 0.5) -> int:
        """Return the server's exit status once it exits."""
        assert self.process is not None, "launch() first"
        while (status := self.process.returncode) is None:  # noqa: ASYNC110 - a process's exit sets no event
            await asyncio.sleep(poll_s)
        return status

    async def stop(self, grace_s: float) -> bool:
        """SIGTERM the server, ``grace_s`` to exit, then SIGKILL; whether it is gone."""
        return await self.process.stop(grace_s) if self.process is not None else True

    def describe(self) -> str:
        """The server's command and the tail of its log, for error messages."""
        return self.process.describe() if self.process is not None else "(not launched)"


class _RemoteExit:
    """A launched server's liveness as :func:`wait_healthy` reads it, from the actor's ``wait_exit``."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref

    @property
    def returncode(self) -> int | str | None:
        import ray

        ready, _ = ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            status: int = ray.get(self.ref)
        except ray.exceptions.RayError as e:
            return f"its Ray actor died ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        return status

    @property
    def alive(self) -> bool:
        return self.returncode is None


class ActorEngine:
    """An engine the fleet launches as an :class:`EngineActor` (see the module docstring).

    Args:
        spec: the server to run (``host``/``port`` are chosen on the engine's node).
        name: its name in logs and errors.
        run_dir: where its log goes (``run_dir/NAME.log``, on a filesystem the node shares).
        actor_options: ``EngineActor.options(...)``: its bundle and resource share.
        gpu_ids: the GPUs of all its bundles (its server's ``CUDA_VISIBLE_DEVICES``); empty on CPUs.
    """

    launched = True

    def __init__(self, spec: EngineSpec, name: str, run_dir: Path, actor_options: dict[str, Any], gpu_ids: list[str]) -> None:
        self.spec, self.name, self.run_dir = spec, name, run_dir
        self.actor_options, self.gpu_ids = actor_options, gpu_ids
        self.launches = 0
        self._actor: Any = None
        self._exit: _RemoteExit | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError(f"engine {self.name} has no URL before its first launch")
        return self._url

    async def start(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        """A fresh actor on the engine's bundle, its server launched and healthy within ``timeout_s``.

        Raises:
            EngineLaunchError: the actor or the server did not start, or was not healthy in time
                (the actor is killed first); the message has the server's command and log tail.
        """
        import ray

        self.kill_now()
        self.launches += 1
        self._actor = ray.remote(EngineActor).options(**self.actor_options).remote()
        env = {"CUDA_VISIBLE_DEVICES": ",".join(self.gpu_ids)} if self.gpu_ids else {}
        try:
            launch = self._actor.launch.remote(self.spec, self.name, str(self.run_dir / f"{self.name}.log"), env)
            try:
                self._url = await asyncio.wait_for(launch, timeout_s)
            except TimeoutError:
                raise NotHealthy(f"its Ray actor did not start the server within {timeout_s:g} s (`ray status` shows whether "
                                 "the actor could be scheduled)") from None
            self._exit = _RemoteExit(self._actor.wait_exit.remote())
            await wait_healthy(session, self.url, timeout_s, process=self._exit)
        except (NotHealthy, ray.exceptions.RayError) as e:
            detail = await self._describe()
            self.kill_now()
            raise EngineLaunchError(f"engine {self.name} ({self._placed()}): {e}\n{detail}") from None

    def _placed(self) -> str:
        """Where its actor was asked to run, for messages."""
        index = getattr(self.actor_options.get("scheduling_strategy"), "placement_group_bundle_index", None)
        return "Ray actor" if index is None else f"Ray actor on placement-group bundle {index}"

    def exit_status(self) -> int | str | None:
        """The server's exit status, or why its actor is gone; ``None`` while it runs."""
        return self._exit.returncode if self._exit is not None else None

    async def stop(self, grace_s: float) -> bool:
        """SIGTERM the server (``grace_s`` to exit, then SIGKILL), then end the actor."""
        if self._actor is None:
            return True
        try:
            await asyncio.wait_for(self._actor.stop.remote(grace_s), grace_s + CALL_TIMEOUT_S)
        except Exception:  # a dead or stuck actor: killing it below takes its server with it
            pass
        self.kill_now()
        return True

    async def kill(self) -> bool:
        """End the actor at once (its server dies with it)."""
        self.kill_now()
        return True

    def kill_now(self) -> None:
        """End the actor at once, without waiting (its server dies with it)."""
        import ray

        actor, self._actor, self._exit = self._actor, None, None
        if actor is not None:
            ray.kill(actor, no_restart=True)

    async def _describe(self) -> str:
        if self._actor is None:
            return ""
        try:
            description: str = await asyncio.wait_for(self._actor.describe.remote(), CALL_TIMEOUT_S)
        except Exception as e:  # the actor itself failed: say so instead of the log
            return f"(its actor could not describe the server: {type(e).__name__})"
        return description
