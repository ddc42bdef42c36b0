"""A probe of the event loop for tests of "runs off the loop" claims: a task that sleeps a short
period in a loop while the test's block runs. A blocked loop shows few ticks and a long gap."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class LoopProbe:
    """The gaps between the probe's ticks so far, in seconds."""

    gaps: list[float] = field(default_factory=list)

    @property
    def ticks(self) -> int:
        return len(self.gaps)

    @property
    def worst(self) -> float:
        """The longest gap (0 before the first tick)."""
        return max(self.gaps, default=0.0)


@asynccontextmanager
async def loop_probe(period: float = 0.01) -> AsyncIterator[LoopProbe]:
    """Ticks every ``period`` seconds while the block runs; the tick that spans the block's end is
    recorded before the probe stops."""
    probe, stop = LoopProbe(), asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(period)
            now = time.perf_counter()
            probe.gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        yield probe
    finally:
        stop.set()
        await ticker
