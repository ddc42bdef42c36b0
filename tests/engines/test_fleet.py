"""The engine fleet against real processes: two ``agentrl serve`` workers (a tiny random Llama)
behind the real sglang-router. Generation through the router reaches both; a worker killed with
SIGKILL is restarted (launched) or dropped (external) and the router keeps serving; a worker that
never gets healthy, or exits, fails the start in bounded time with its command and log; nothing
the fleet started outlives it, Ctrl-C included.

Each worker is told apart by the weight version it reports in every answer (set per worker with
``/update_weight_version``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from agentrl.engines import (
    EngineFleet,
    EngineLaunchError,
    EngineSpec,
    FleetConfig,
    FleetError,
    FleetEvent,
    RouterClient,
    RouterError,
    RouterSpec,
)
from agentrl.engines.launch import LaunchedEngine
from agentrl.engines.process import free_port, kill_started_processes
from agentrl.engines.router import RouterProcess
from tests.loop_probe import loop_probe

pytest.importorskip("sglang_router", reason="sglang-router is a test dependency (pip install -e '.[test]')")

FAST = FleetConfig(start_timeout_s=180, interval_s=0.5, probe_timeout_s=20, failures_to_dead=2, router_timeout_s=30, stop_grace_s=20)
ROUND_ROBIN = RouterSpec({"policy": "round_robin", "log_level": "warn"})
NEVER_HEALTHY = ("sh", "-c", 'echo "pid $$"; exec sleep 600')  # a launcher that runs this instead of the engine
ENGINE_PID = re.compile(r"^pid (\d+)$", re.MULTILINE)  # what NEVER_HEALTHY prints
ROUTER_PID = re.compile(r"router ready at \S+ \(pid (\d+)\)")  # what the fleet logs
# An engine that answers every health check and ignores SIGTERM, as one stuck in a GPU call does;
# run as EngineSpec.launcher, so the engine's own argv (with --port) follows it.
STUCK_ENGINE = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), Healthy).serve_forever()
"""
STUCK = EngineSpec("unused", launcher=(sys.executable, "-c", STUCK_ENGINE))


def worker(tiny_dir: Path, **changes) -> EngineSpec:
    return replace(EngineSpec(str(tiny_dir), server_args={"dtype": "float32", "random_seed": 0}), **changes)


async def set_version(url: str, version: int) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/update_weight_version", json={"new_version": version}) as r:
        assert r.status == 200, await r.text()


async def versions_through(router_url: str, requests: int) -> list[str]:
    """The weight versions reported by ``requests`` sequential generations through the router."""
    versions = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for i in range(requests):
            body = {"input_ids": [1, 504, 3001, i], "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
            async with http.post(f"{router_url}/generate", json=body) as r:
                assert r.status == 200, await r.text()
                reply = await r.json()
            assert reply["output_ids"] and reply["meta_info"]["finish_reason"] is not None
            versions.append(reply["meta_info"]["weight_version"])
    return versions


async def router_workers(router_url: str) -> list[str]:
    async with RouterClient(router_url) as registry:
        return sorted(w["url"] for w in await registry.workers() if w["is_healthy"])


async def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.1)


def gone(pid: int) -> bool:
    """Whether process ``pid`` is gone (or a zombie, which runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_router_reaches_both_workers_and_a_killed_worker_is_restarted_before_it_rejoins(tiny_dir, tmp_path):
    events: list[tuple[FleetEvent, list[str]]] = []

    async def on_event(event: FleetEvent) -> None:  # stands for a weight push, done before the router sends it traffic
        events.append((event, await router_workers(fleet.router_url)))
        await set_version(event.url, 3)

    async with EngineFleet([worker(tiny_dir), worker(tiny_dir)], tmp_path, router=ROUND_ROBIN, config=FAST, on_event=on_event) as fleet:
        first, second = fleet.engines
        await asyncio.gather(set_version(first.url, 1), set_version(second.url, 2))
        assert await router_workers(fleet.router_url) == sorted(fleet.urls)
        assert sorted(await versions_through(fleet.router_url, 4)) == ["1", "1", "2", "2"]

        killed = first.process.pid
        os.kill(killed, signal.SIGKILL)
        await eventually(lambda: fleet.restarts == 1 and len(fleet.urls) == 2, 120, "the killed worker back in service")
        assert [(e.kind, e.engine, e.url, workers) for e, workers in events] == [("restarted", "engine-0", first.url, [second.url])]
        # found by its exit status, or (on a loaded machine, while the kernel still tears the big process
        # down after its sockets closed) by the health probes first
        assert "exited with status -9" in events[0][0].reason or "Cannot connect" in events[0][0].reason
        assert first.process.pid != killed and first.launches == 2 and gone(killed)
        assert await router_workers(fleet.router_url) == sorted(fleet.urls)
        assert sorted(await versions_through(fleet.router_url, 4)) == ["2", "2", "3", "3"]  # never the relaunched "0"
        assert fleet.metrics() == {"engines/in_service": 2, "engines/restarts": 1, "engines/drops": 0}
        pids = [first.process.pid, second.process.pid, fleet.router.process.pid]
    assert all(map(gone, pids))
    assert (tmp_path / "engine-0.log").read_text().count("# agentrl: ") == 2  # both launches, one log
    assert "ready at" in (tmp_path / "engine-1.log").read_text() and (tmp_path / "router.log").exists()


async def test_a_killed_external_worker_is_dropped_and_losing_the_last_worker_fails_the_fleet(tiny_dir, tmp_path):
    outside = LaunchedEngine(worker(tiny_dir, port=free_port()), "outside", tmp_path / "outside")  # somebody else's server
    config = replace(FAST, max_restarts=0)  # a launched worker that dies is dropped too
    events: list[FleetEvent] = []

    async def on_event(event: FleetEvent) -> None:
        events.append(event)

    async with aiohttp.ClientSession() as http:
        starting = asyncio.create_task(outside.start(http, 180))
        try:
            with pytest.raises(FleetError) as error:
                async with EngineFleet([outside.url, worker(tiny_dir)], tmp_path, router=ROUND_ROBIN, config=config, on_event=on_event) as fleet:
                    await starting  # the fleet waited for it to get healthy
                    external, launched = fleet.engines
                    assert (external.name, external.url, external.launched) == ("external-0", outside.url, False)
                    await asyncio.gather(set_version(external.url, 1), set_version(launched.url, 2))
                    assert sorted(await versions_through(fleet.router_url, 4)) == ["1", "1", "2", "2"]

                    with fleet.checks_held():  # failed probes do not count in here
                        os.kill(outside.process.pid, signal.SIGKILL)
                        await asyncio.sleep(8 * config.interval_s)
                        assert fleet.drops == 0 and len(fleet.urls) == 2
                    await eventually(lambda: fleet.drops == 1, 60, "the killed external worker dropped")
                    assert [(e.kind, e.engine, e.url) for e in events] == [("dropped", "external-0", outside.url)]
                    assert "/health_generate failed" in events[0].reason
                    assert fleet.urls == [launched.url] and await router_workers(fleet.router_url) == [launched.url]
                    assert await versions_through(fleet.router_url, 4) == ["2"] * 4
                    assert fleet.metrics() == {"engines/in_service": 1, "engines/restarts": 0, "engines/drops": 1}

                    pids = [launched.process.pid, fleet.router.process.pid]
                    os.kill(launched.process.pid, signal.SIGKILL)
                    await asyncio.sleep(60)  # the fleet's failure cancels this task
        finally:
            await outside.kill()
    assert str(error.value).startswith("the engine fleet failed: every engine was dropped; the last, engine-1")
    assert [e.kind for e in events] == ["dropped", "dropped"] and asyncio.current_task().cancelling() == 0
    assert all(map(gone, pids))


@pytest.mark.parametrize(("spec", "timeout_s", "expected", "command"), [
    (EngineSpec("unused", launcher=NEVER_HEALTHY), 3, "did not answer /health_generate with 200 within 3s", "exec sleep 600"),
    (EngineSpec("/nonexistent", backend="sglang"), 60, "exited with status 1 before /health_generate answered 200",
     "-m sglang.launch_server --model-path /nonexistent"),
], ids=["never-healthy", "exits"])
async def test_a_worker_that_does_not_get_healthy_fails_the_start_in_bounded_time(tmp_path, spec, timeout_s, expected, command):
    fleet = EngineFleet([spec], tmp_path, router=ROUND_ROBIN, config=replace(FAST, start_timeout_s=timeout_s))
    started = time.monotonic()
    with pytest.raises(EngineLaunchError) as error:
        await fleet.start()
    assert time.monotonic() - started < timeout_s + 5
    message = str(error.value)
    assert message.startswith("engine engine-0 (http://127.0.0.1:") and expected in message
    assert "\ncommand: " in message and command in message
    assert f"\nlog {tmp_path / 'engine-0.log'}, last lines:\n" in message
    assert gone(fleet.router.process.pid) and fleet.urls == []
    if spec.launcher:  # the tail of the engine's own output, from a process that is gone
        assert gone(int(ENGINE_PID.search(message)[1]))


async def test_router_registry_refuses_an_unreachable_worker_in_bounded_time(tmp_path):
    router = RouterProcess(ROUND_ROBIN, tmp_path)
    async with aiohttp.ClientSession() as http:
        await router.start(http, 60)
    try:
        async with RouterClient(router.url) as registry:
            with pytest.raises(RouterError, match=r"did not list http://127.0.0.1:9 as a healthy worker within 1s"):
                await registry.register("http://127.0.0.1:9", timeout_s=1)
            await registry.remove("http://127.0.0.1:9", timeout_s=5)  # never listed: nothing to do
            assert await registry.workers() == []
    finally:
        await router.stop(5)
    assert gone(router.process.pid)


async def test_closing_the_fleet_sigkills_an_engine_that_ignores_sigterm_after_its_grace_without_stalling_the_loop(tmp_path, caplog):
    fleet = EngineFleet([STUCK], tmp_path, config=replace(FAST, stop_grace_s=1))
    await fleet.start()
    (engine,) = fleet.engines
    async with loop_probe() as watch:
        started = time.monotonic()
        await fleet.aclose()
        elapsed = time.monotonic() - started
    assert gone(engine.process.pid) and engine.process.returncode == -signal.SIGKILL
    assert 1 <= elapsed < 4 and watch.worst < 0.25, (elapsed, watch.worst)
    assert f"engine-0 (pid {engine.process.pid}) did not exit within 1s of SIGTERM; sending SIGKILL to its process group" in caplog.text


async def test_the_router_and_engines_the_fleet_launches_are_killed_by_kill_started_processes(tmp_path):
    router, engine = RouterProcess(ROUND_ROBIN, tmp_path), LaunchedEngine(STUCK, "engine-0", tmp_path)
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(router.start(http, 60), engine.start(http, 60))
    pids = [router.process.pid, engine.process.pid]
    assert not any(map(gone, pids))
    assert kill_started_processes(timeout_s=10) == []
    assert all(map(gone, pids))
    assert await router.stop(1) and await engine.stop(1)  # reaped already: nothing to do


INTERRUPTED = """
import asyncio, logging, signal, sys
from agentrl.engines import EngineFleet, EngineSpec, FleetConfig, RouterSpec
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background non-interactive shell starts us with SIGINT ignored
logging.basicConfig(level=logging.INFO)
spec = EngineSpec("unused", launcher=("sh", "-c", 'echo "pid $$"; exec sleep 600'))
asyncio.run(EngineFleet([spec], sys.argv[1], router=RouterSpec(), config=FleetConfig(start_timeout_s=300, stop_grace_s=5)).start())
"""


def test_ctrl_c_while_starting_kills_the_router_and_the_engines(tmp_path):
    with open(tmp_path / "stderr", "w+") as stderr:
        script = subprocess.Popen([sys.executable, "-c", INTERRUPTED, str(tmp_path)], stderr=stderr)
        try:
            deadline = time.monotonic() + 60
            while not (ROUTER_PID.search(_read(tmp_path / "stderr")) and ENGINE_PID.search(_read(tmp_path / "engine-0.log"))):
                assert time.monotonic() < deadline and script.poll() is None, _read(tmp_path / "stderr")
                time.sleep(0.1)
            router_pid = int(ROUTER_PID.search(_read(tmp_path / "stderr"))[1])
            engine_pid = int(ENGINE_PID.search(_read(tmp_path / "engine-0.log"))[1])
            assert not gone(router_pid) and not gone(engine_pid)
            script.send_signal(signal.SIGINT)
            assert script.wait(timeout=120) != 0
        finally:
            script.kill()
            script.wait()
            for pid in (locals().get("router_pid"), locals().get("engine_pid")):  # never leak a router holding its ports
                if pid is not None and not gone(pid):
                    os.kill(pid, signal.SIGKILL)
        assert "KeyboardInterrupt" in (tmp_path / "stderr").read_text()
    assert gone(router_pid) and gone(engine_pid)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
