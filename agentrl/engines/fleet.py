"""A fleet of inference engines behind an optional sglang-router, kept healthy while it runs.

    async with EngineFleet([EngineSpec("smollm2-135m"), EngineSpec("smollm2-135m")], run_dir,
                           router=RouterSpec({"policy": "cache_aware"})) as fleet:
        async with SGLangPolicy(fleet.router_url) as policy: ...

Starting launches every :class:`~agentrl.engines.launch.EngineSpec` and the router at once,
health-checks the external engines (given as URLs), and registers all engines with the router;
if anything fails, everything started so far is killed before the error is raised.

While it runs, a monitor task (owned by the fleet, cancelled on exit) checks each engine's
``/health_generate`` every ``interval_s``. An engine is dead after ``failures_to_dead`` failed
checks in a row, or at once if it is a launched engine whose process exited. A dead engine leaves
the router, then:

* launched: it is relaunched on its port (up to ``max_restarts`` times over the fleet's life),
  the ``on_event`` hook is awaited with a ``"restarted"`` event *before* the engine rejoins the
  router (push the current weights there: a relaunched engine has the checkpoint's), and it
  rejoins the router;
* external, or launched past its restarts: it is dropped, and ``on_event`` gets ``"dropped"``.

Engines hold new requests while they load weights, health checks included: run weight pushes
inside :meth:`EngineFleet.checks_held` so that a long load does not count as a death.

Failure of the fleet itself (every engine dropped, the router exited, the router refusing a
healthy engine, the hook raising) ends the monitor; as in a ``TaskGroup``, the task that started
the fleet is then cancelled and leaving the ``async with`` raises :class:`FleetError`.

Leaving (normally, on an error, or on Ctrl-C's cancellation) stops the router and every launched
engine (SIGTERM, ``stop_grace_s``, SIGKILL) and kills whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import aiohttp

from agentrl.engines.health import probe
from agentrl.engines.launch import (
    Engine,
    EngineLaunchError,
    EngineSpec,
    ExternalEngine,
    LaunchedEngine,
)
from agentrl.engines.process import ProcessOwner
from agentrl.engines.router import RouterClient, RouterProcess, RouterSpec
from agentrl.errors import ConfigError, PolicyError

log = logging.getLogger(__name__)


class FleetError(PolicyError):
    """The fleet cannot serve any more: no engine left, or the router failed."""


@dataclass(frozen=True)
class FleetConfig:
    """How the fleet starts, watches and stops its engines (all times in seconds).

    Attributes:
        start_timeout_s: most time one launch of an engine, or the router, may take to answer
            healthy (SGLang loading a large model on many GPUs takes minutes).
        interval_s: time between two health checks of one engine.
        probe_timeout_s: most time one ``/health_generate`` may take (SGLang's own limit is 20).
        failures_to_dead: failed checks in a row after which an engine counts as dead.
        max_restarts: relaunches one engine may have over the fleet's life; past them it is dropped.
        router_timeout_s: most time the router may take to add or remove a worker.
        stop_grace_s: time engines and the router get to exit after SIGTERM before SIGKILL.
    """

    start_timeout_s: float = 600.0
    interval_s: float = 10.0
    probe_timeout_s: float = 30.0
    failures_to_dead: int = 3
    max_restarts: int = 3
    router_timeout_s: float = 60.0
    stop_grace_s: float = 15.0

    def __post_init__(self) -> None:
        for name in ("start_timeout_s", "interval_s", "probe_timeout_s", "router_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"FleetConfig.{name} must be > 0, got {getattr(self, name)}")
        if self.failures_to_dead < 1:
            raise ConfigError(f"FleetConfig.failures_to_dead must be >= 1, got {self.failures_to_dead}")
        if self.max_restarts < 0 or self.stop_grace_s < 0:
            raise ConfigError(f"FleetConfig.max_restarts and stop_grace_s must be >= 0, got {self.max_restarts}, {self.stop_grace_s}")


@dataclass(frozen=True)
class FleetEvent:
    """Something the monitor did to an engine.

    Attributes:
        kind: ``"restarted"`` (relaunched and healthy, not yet back in the router) or ``"dropped"``.
        engine: the engine's name (``engine-0``, ``external-1``, or its spec's name).
        url: its URL (a relaunched engine keeps its URL unless its port had to change).
        reason: why it counted as dead.
    """

    kind: Literal["restarted", "dropped"]
    engine: str
    url: str
    reason: str


EventHook = Callable[[FleetEvent], Awaitable[None]]


class FleetState(enum.Enum):
    """``NEW`` until :meth:`EngineFleet.start`; ``CLOSED`` after :meth:`EngineFleet.aclose` is final."""

    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


class EngineFleet:
    """Engines (launched from specs, or external URLs) and an optional router; see the module docstring.

    Args:
        engines: an :class:`EngineSpec` per engine to launch, a URL per external engine.
        run_dir: where the logs go (``engine-<i>.log``, ``router.log``).
        router: launch sglang-router in front of the engines; ``None``: no router (address
            :attr:`urls` directly, e.g. with ``SGLangPolicy(fleet.urls)``).
        config: timeouts and health-check settings.
        on_event: awaited for every restart and drop (see :class:`FleetEvent`); an exception it
            raises fails the fleet.
    """

    def __init__(self, engines: Sequence[EngineSpec | str | Engine], run_dir: str | Path, *, router: RouterSpec | None = None,
                 config: FleetConfig | None = None, on_event: EventHook | None = None) -> None:
        if not engines:
            raise ConfigError("EngineFleet needs at least one engine (an EngineSpec or an external URL)")
        self.run_dir, self.config, self._on_event = Path(run_dir), config or FleetConfig(), on_event
        self._all: list[Engine] = [_engine(e, i, self.run_dir) for i, e in enumerate(engines)]
        names = [e.name for e in self._all]
        if len(set(names)) < len(names):
            raise ConfigError(f"EngineFleet: engine names must differ, got {names}")
        self.router = RouterProcess(router, self.run_dir) if router else None
        self.restarts = self.drops = 0
        self.state = FleetState.NEW
        self._live: list[Engine] = []
        self._dropped: list[Engine] = []
        self._session: aiohttp.ClientSession | None = None
        self._registry: RouterClient | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._host: asyncio.Task[object] | None = None
        self._failure: BaseException | None = None
        self._cancelled_host = False
        self._holds = 0

    @property
    def engines(self) -> list[Engine]:
        """The engines in service now (not those restarting or dropped)."""
        return list(self._live)

    @property
    def urls(self) -> list[str]:
        """The URLs of the engines in service now."""
        return [e.url for e in self._live]

    @property
    def router_url(self) -> str | None:
        return self.router.url if self.router else None

    def raise_if_failed(self) -> None:
        """Raise :class:`FleetError` if the fleet failed: the router has exited (checked now, not
        at the monitor's next poll), or the monitor failed (every engine dropped, an event hook
        raised). The failure also cancels the task that started the fleet, but where that task
        has ended (a Ray actor's call), callers learn of it only here."""
        if self._failure is None and self.state is FleetState.RUNNING and self.router is not None and not self.router.alive:
            self._failure = self._router_exited()
        if self._failure is not None:
            raise FleetError(f"the engine fleet failed: {self._failure}") from self._failure

    @contextlib.contextmanager
    def checks_held(self) -> Iterator[None]:
        """Within this block failed health probes do not count, e.g. while weights load: engines
        hold new requests then, ``/health_generate`` included. A launched engine whose process
        exits is still found dead at once. Blocks may nest and overlap."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1

    def metrics(self) -> dict[str, int]:
        """Counters for the run's metrics: engines in service, restarts and drops so far."""
        return {"engines/in_service": len(self._live), "engines/restarts": self.restarts, "engines/drops": self.drops}

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything and the monitor; see the module docstring.

        Raises:
            EngineLaunchError, RouterError: an engine or the router did not start (everything
                started is killed first); the message names it, its command and its log's tail.
            RuntimeError: the fleet was started before.
        """
        if self.state is not FleetState.NEW:
            raise RuntimeError(f"EngineFleet is {self.state.value}; a fleet starts once")
        self.state, self._host = FleetState.RUNNING, asyncio.current_task()
        self._session = aiohttp.ClientSession()
        try:
            starting: list[Engine | RouterProcess] = [*([self.router] if self.router else []), *self._all]
            await _first_error(self._launch(p) for p in starting)
            self._live = list(self._all)
            await _first_error(self._register(e) for e in self._live)
        except BaseException:
            await self.aclose()
            raise
        self._monitor = asyncio.create_task(self._supervise(), name="engine-fleet-monitor")
        self._monitor.add_done_callback(self._monitor_done)

    async def aclose(self) -> None:
        """Stop the monitor, the router and every launched engine; safe to call twice.

        Raises:
            FleetError: the monitor had failed (after the cleanup).
        """
        if self.state is FleetState.CLOSED:
            return
        self.state = FleetState.CLOSED
        try:
            if self._monitor is not None:
                self._monitor.cancel()
                await asyncio.wait([self._monitor])
            if self._registry is not None:
                await self._registry.aclose()
            grace = self.config.stop_grace_s
            await asyncio.gather(*(p.stop(grace) for p in self._processes()))
        finally:
            try:
                for p in self._processes():
                    p.kill_now()  # every SIGKILL before any wait: done even if the wait is cancelled
                await asyncio.gather(*(p.kill() for p in self._processes()))
            finally:
                if self._session is not None:
                    await self._session.close()
        self.raise_if_failed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            await self.aclose()
        finally:
            if self._cancelled_host and self._host is not None and self._host.cancelling():
                self._host.uncancel()  # the cancellation was ours: FleetError replaces it

    def _processes(self) -> list[RouterProcess | Engine]:
        return [*([self.router] if self.router else []), *(e for e in self._all if e.launched)]

    # --- starting -------------------------------------------------------------------------------

    async def _launch(self, engine: Engine | RouterProcess) -> None:
        assert self._session is not None
        await engine.start(self._session, self.config.start_timeout_s)
        if isinstance(engine, RouterProcess):
            self._registry = RouterClient(engine.url)
        process = engine.process if isinstance(engine, ProcessOwner) else None
        log.info("%s ready at %s (pid %s)", engine.name, engine.url, process.pid if process else None)

    async def _register(self, engine: Engine) -> None:
        if self._registry is not None:
            await self._registry.register(engine.url, self.config.router_timeout_s)

    # --- supervision ----------------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                for engine in self._live:
                    group.create_task(self._watch(engine))
                if self.router is not None:
                    group.create_task(self._watch_router())
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None

    async def _watch(self, engine: Engine) -> None:
        """Check ``engine`` until it is dropped; recover it each time it is found dead."""
        failures = 0
        while True:
            await asyncio.sleep(self.config.interval_s)
            reason = await self._check(engine)
            exited = engine.exit_status() is not None
            if reason is None or (self._holds and not exited):
                failures = 0
                continue
            failures = self.config.failures_to_dead if exited else failures + 1
            log.warning("%s (%s): health check %d/%d failed: %s", engine.name, engine.url, failures, self.config.failures_to_dead, reason)
            if failures < self.config.failures_to_dead:
                continue
            if not await self._recover(engine, reason):
                return
            failures = 0

    async def _check(self, engine: Engine) -> str | None:
        status = engine.exit_status()
        if status is not None:
            return f"its process exited with status {status}" if isinstance(status, int) else str(status)
        assert self._session is not None
        return await probe(self._session, engine.url, self.config.probe_timeout_s)

    async def _recover(self, engine: Engine, reason: str) -> bool:
        """Take dead ``engine`` out of service and the router; relaunch it if allowed. Whether it is back."""
        self._live.remove(engine)
        if self._registry is not None:
            await self._registry.remove(engine.url, self.config.router_timeout_s)
        if engine.launched and await self._relaunch(engine):
            self.restarts += 1
            await self._emit(FleetEvent("restarted", engine.name, engine.url, reason))
            await self._register(engine)
            self._live.append(engine)
            return True
        self.drops += 1
        self._dropped.append(engine)
        await self._emit(FleetEvent("dropped", engine.name, engine.url, reason))
        if len(self._dropped) == len(self._all):
            raise FleetError(f"every engine was dropped; the last, {engine.name} ({engine.url}): {reason}")
        return False

    async def _relaunch(self, engine: Engine) -> bool:
        """Kill and relaunch ``engine`` until it is healthy or has had ``max_restarts`` relaunches."""
        await engine.kill()
        while engine.launches <= self.config.max_restarts:
            try:
                await self._launch(engine)
                return True
            except EngineLaunchError as e:
                log.warning("relaunch %d/%d of %s failed: %s", engine.launches - 1, self.config.max_restarts, engine.name, e)
        log.warning("%s was relaunched %d times, the most allowed (FleetConfig.max_restarts): dropping it", engine.name, self.config.max_restarts)
        return False

    async def _watch_router(self) -> None:
        assert self.router is not None and self.router.process is not None
        while self.router.alive:  # noqa: ASYNC110 - polls a process's exit, which no event reports
            await asyncio.sleep(self.config.interval_s)
        raise self._router_exited()

    def _router_exited(self) -> FleetError:
        assert self.router is not None and self.router.process is not None
        return FleetError(f"sglang-router exited with status {self.router.process.returncode}\n{self.router.process.describe()}")

    async def _emit(self, event: FleetEvent) -> None:
        log.warning("%s (%s) %s: %s", event.engine, event.url, event.kind, event.reason)
        if self._on_event is not None:
            await self._on_event(event)

    def _monitor_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._failure = task.exception()
        log.error("engine fleet failed: %s", self._failure)
        if self._host is not None and not self._host.done():
            self._cancelled_host = True
            self._host.cancel()


async def _first_error(calls: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines ``calls`` concurrently; on the first failure cancel the rest and raise it."""
    try:
        async with asyncio.TaskGroup() as group:
            for call in calls:
                group.create_task(call)
    except BaseExceptionGroup as group:
        raise group.exceptions[0] from None


def _engine(engine: EngineSpec | str | Engine, index: int, run_dir: Path) -> Engine:
    """An engine of the fleet from what the caller gave: a spec to launch, a URL to attach, or one built already."""
    if isinstance(engine, EngineSpec):
        return LaunchedEngine(engine, f"engine-{index}", run_dir)
    if isinstance(engine, str):
        return ExternalEngine(engine, f"external-{index}")
    return engine
