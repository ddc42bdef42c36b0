"""The rollout backend's engines: what a restarted engine is given."""

from __future__ import annotations

import asyncio
import contextlib

import torch

from agentrl.engines.backend import BackendConfig, _Engines


class RecordingSync:
    def __init__(self) -> None:
        self.pushed: list[int] = []

    async def push(self, named_tensors, *, weight_version: int) -> None:
        self.pushed.append(weight_version)

    async def aclose(self) -> None:
        pass


class StubFleet:
    urls = ["http://127.0.0.1:1"]

    @contextlib.contextmanager
    def checks_held(self):
        yield


async def test_the_weights_kept_for_a_restarted_engine_are_the_pushed_version_not_the_live_parameters():
    """With --train-async the trainer updates its parameters in place right after a push; an engine
    relaunched then must load the pushed version, not a torn mix labelled with the old version."""
    engines = _Engines.__new__(_Engines)
    engines.cfg, engines.fleet, engines.sync, engines.stale, engines.latest = BackendConfig(bf16=False), StubFleet(), RecordingSync(), False, None
    engines.changed = asyncio.Event()
    weight = torch.nn.Parameter(torch.ones(4, 4))
    await engines.push([("w", weight)], 3)
    with torch.no_grad():
        weight.add_(1.0)  # the next optimizer step
    tensors, version = engines.latest
    assert version == 3 and torch.equal(tensors[0][1], torch.ones(4, 4))
    assert tensors[0][1].device.type == "cpu" and engines.sync.pushed == [3]
