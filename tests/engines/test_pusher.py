"""The weight pusher: what a relaunched engine is given, and pushes across a changing fleet."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentrl.engines.pusher import PushConfig, WeightPusher
from agentrl.serving.engine_client import EngineRequestError


class RecordingSync:
    """A transport that records pushes and fails the first ``failures`` of them."""

    def __init__(self, urls: list[str], failures: int = 0) -> None:
        self.urls, self.failures, self.pushed = urls, failures, []

    async def push(self, named_tensors, *, weight_version: int) -> None:
        if self.failures:
            self.failures -= 1
            raise EngineRequestError(f"{self.urls[0]} could not be reached")
        self.pushed.append(weight_version)

    async def aclose(self) -> None:
        pass


class StubFleet:
    """A FleetView whose engine list changes (a restart) when a failed push waits for it."""

    def __init__(self) -> None:
        self.epoch, self.urls, self.holds, self.waits = 0, ["http://a", "http://b"], [], 0

    async def engine_urls(self):
        return list(self.urls), self.epoch

    async def hold_checks(self, hold: bool) -> None:
        self.holds.append(hold)

    async def wait_for_change(self, epoch: int) -> bool:
        self.waits += 1
        self.epoch, self.urls = self.epoch + 1, ["http://a", "http://b2"]
        return True


def pusher(fleet: StubFleet, failures: int = 0) -> tuple[WeightPusher, list[RecordingSync]]:
    made: list[RecordingSync] = []
    push = WeightPusher(fleet, PushConfig("disk", "cpu", None, Path("/unused")))

    def transport(urls):
        made.append(RecordingSync(urls, failures if not made else 0))
        return made[-1]

    push._transport = transport  # the transports have their own tests; here: which engines, when
    return push, made


async def test_the_weights_kept_for_a_relaunched_engine_are_the_pushed_version_not_the_live_parameters():
    """With --train-async the trainer updates its parameters in place right after a push; an engine
    relaunched then must load the pushed version, not a torn mix labelled with the old version."""
    push, _ = pusher(StubFleet())
    weight = torch.nn.Parameter(torch.ones(4, 4))
    await push.push([("w", weight)], 3)
    with torch.no_grad():
        weight.add_(1.0)  # the next optimizer step
    ((_, kept),) = push.latest.tensors
    assert push.latest_version == 3 and torch.equal(kept, torch.ones(4, 4)) and kept.device.type == "cpu"


async def test_a_push_that_hits_a_dead_engine_waits_for_the_fleet_and_goes_to_the_engines_in_service():
    fleet = StubFleet()
    push, made = pusher(fleet, failures=1)
    await push.push([("w", torch.zeros(2))], 1)
    assert fleet.waits == 1 and [m.urls for m in made] == [["http://a", "http://b"], ["http://a", "http://b2"]]
    assert made[1].pushed == [1] and fleet.holds == [True, False, True, False]  # checks held during each attempt
    await push.push([("w", torch.zeros(2))], 2)
    assert len(made) == 2 and made[1].pushed == [1, 2]  # the fleet did not change: the same transport


async def test_a_push_that_keeps_failing_gives_up_after_its_attempts():
    fleet = StubFleet()
    push, made = pusher(fleet, failures=1)
    push._transport = lambda urls: made.append(RecordingSync(urls, failures=1)) or made[-1]
    with pytest.raises(EngineRequestError, match="could not be reached"):
        await push.push([("w", torch.zeros(2))], 1)
    assert len(made) == 3 and fleet.holds.count(True) == fleet.holds.count(False) == 3


async def test_a_fleet_with_no_engine_in_service_is_waited_for_not_pushed_to():
    """An engine relaunched by the fleet is out of service until it rejoins: a push then waits."""
    fleet = StubFleet()
    fleet.urls = []
    push, made = pusher(fleet)
    await push.push([("w", torch.zeros(2))], 1)
    assert fleet.waits == 1 and [m.urls for m in made] == [["http://a", "http://b2"]] and made[0].pushed == [1]
