"""Admission of ``/generate`` requests: held while generation is paused or weights are loading.

SGLang's tokenizer manager keeps new requests waiting while the server is paused
(``/pause_generation`` until ``/continue_generation``) and while a weight update holds its lock.
:class:`RequestGate` does both for agentrl's server, and tracks which request ids are in flight
(admitted and not yet answered) so that pausing can abort them and ``/flush_cache`` can tell
whether requests are still running. It also keeps request ids unique among the requests being
answered, waiting or admitted, as SGLang refuses a duplicate request id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence

from agentrl.policies.base import Policy
from agentrl.serving.bodies import BadRequest


class RequestGate:
    """Open unless paused or a weight update is running; requests wait at a closed gate."""

    def __init__(self) -> None:
        self.paused = False
        self.in_flight: set[str] = set()  # rids admitted and not yet answered
        self._claimed: set[str] = set()  # rids being answered: waiting or admitted
        self.waiting = 0  # requests held at the gate now
        self._updates = 0
        self._open = asyncio.Event()
        self._open.set()

    @property
    def is_open(self) -> bool:
        return not self.paused and self._updates == 0

    def pause(self) -> None:
        """Hold new requests until :meth:`resume`; requests in flight are not touched."""
        self.paused = True
        self._sync()

    def resume(self) -> None:
        self.paused = False
        self._sync()

    @contextlib.asynccontextmanager
    async def updating(self) -> AsyncIterator[None]:
        """Hold new requests for the duration of a weight update (a pause stays a pause)."""
        self._updates += 1
        self._sync()
        try:
            yield
        finally:
            self._updates -= 1
            self._sync()

    @contextlib.contextmanager
    def claimed(self, rids: Sequence[str]) -> Iterator[None]:
        """Hold ``rids`` for the block, all or none.

        Raises:
            BadRequest: one of them is held already (a request with that id is being answered).
        """
        taken = next((rid for rid in rids if rid in self._claimed), None)
        if taken is not None:
            raise BadRequest(f"generate: 'rid' {taken!r} is already in flight; request ids must be unique among requests in flight")
        self._claimed.update(rids)
        try:
            yield
        finally:
            self._claimed.difference_update(rids)

    @contextlib.asynccontextmanager
    async def admit(self, rid: str) -> AsyncIterator[None]:
        """Wait until the gate is open, then count ``rid`` in flight for the block."""
        self.waiting += 1
        try:
            while not self._open.is_set():  # it may close again before this waiter runs
                await self._open.wait()
        finally:
            self.waiting -= 1
        self.in_flight.add(rid)
        try:
            yield
        finally:
            self.in_flight.discard(rid)

    def _sync(self) -> None:
        if self.is_open:
            self._open.set()
        else:
            self._open.clear()


async def abort_requests(policy: Policy, rids: Iterable[str]) -> None:
    """Abort each of ``rids`` at ``policy``, together (see :meth:`Policy.abort`; unknown or
    finished ids change nothing). ``policy`` must be able to abort (:attr:`Policy.can_abort`)."""
    await asyncio.gather(*(policy.abort(rid) for rid in rids))
