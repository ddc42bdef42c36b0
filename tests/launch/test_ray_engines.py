"""Engines as Ray actors: a launch that cannot finish says which engine, where, and what it waited for."""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest
import ray

import agentrl.launch.ray_engines
from agentrl.engines.launch import EngineLaunchError, EngineSpec
from agentrl.launch.ray_engines import ActorEngine


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


async def test_an_engine_actor_that_cannot_be_scheduled_fails_its_launch_within_the_bound(local_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(agentrl.launch.ray_engines, "CALL_TIMEOUT_S", 1.0)  # asking the unscheduled actor to describe its server
    engine = ActorEngine(EngineSpec("smollm2-135m"), "engine-0", tmp_path, {"num_cpus": 1, "resources": {"absent": 1}}, [])
    async with aiohttp.ClientSession() as session:
        with pytest.raises(EngineLaunchError) as failed:
            await engine.start(session, 2.0)
    assert str(failed.value).startswith("engine engine-0 (Ray actor): its Ray actor did not start the server within 2 s "
                                        "(`ray status` shows whether the actor could be scheduled)")
