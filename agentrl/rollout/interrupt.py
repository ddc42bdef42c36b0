"""Stopping a batch of episodes at once: slime's abort once dynamic sampling has its groups.

Episodes played with an :class:`Interrupt` send their ``generate`` calls through
:meth:`Interrupt.generate`. After :meth:`Interrupt.abort`:

* each request in flight is aborted at its engine by request id (``await policy.abort(rid)``, see
  :meth:`~agentrl.policies.base.Policy.abort`): it returns ``finish_reason="abort"`` with the tokens
  sampled so far;
* a request whose policy cannot abort (:attr:`~agentrl.policies.base.Policy.can_abort`), or that
  its engine does not hold yet, is cancelled instead (its ``generate`` coroutine gets
  ``CancelledError``) and answers ``"abort"`` with no tokens;
* every later request answers ``"abort"`` at once, with no tokens, without reaching the engine.

The runner then ends each such episode as ``abort``, or with ``keep_partial`` suspends it (env kept
open, tokens kept) so that partial rollout can resume it in a later step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from agentrl.policies.base import Generation, Policy, SamplingParams

log = logging.getLogger(__name__)


class Interrupt:
    """The abort switch of one rollout step. See the module docstring.

    Args:
        keep_partial: suspend the episodes it stops instead of ending them (slime's
            ``--partial-rollout``).
    """

    def __init__(self, *, keep_partial: bool = False) -> None:
        self.keep_partial = keep_partial
        self._aborted = False
        self._in_flight: dict[str, tuple[Policy, asyncio.Task[Generation]]] = {}

    @property
    def aborted(self) -> bool:
        """Whether :meth:`abort` was called; final."""
        return self._aborted

    async def generate(self, policy: Policy, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str) -> Generation:
        """``policy.generate`` that :meth:`abort` can stop; see the module docstring."""
        if self._aborted:
            return Generation([], [], "abort", policy.weight_version)
        request = asyncio.ensure_future(policy.generate(input_ids, sampling, rid=rid))
        self._in_flight[rid] = (policy, request)
        try:
            await asyncio.wait({request})
        except asyncio.CancelledError:  # our caller was cancelled: stop the request too
            request.cancel()
            raise
        finally:
            self._in_flight.pop(rid, None)
        if request.cancelled():
            return Generation([], [], "abort", policy.weight_version)
        return request.result()

    async def abort(self) -> int:
        """Stop every request in flight and refuse new ones. Returns how many it stopped."""
        self._aborted = True
        stopped = list(self._in_flight.items())
        for rid, (policy, request) in stopped:
            if not await _engine_abort(policy, rid):
                request.cancel()
        return len(stopped)


async def _engine_abort(policy: Policy, rid: str) -> bool:
    """Abort ``rid`` at its engine, keeping its partial tokens; False where that is not possible."""
    if not policy.can_abort:
        return False
    try:
        return await policy.abort(rid)
    except Exception as e:  # the request is cancelled instead; the rollout goes on
        log.warning("could not abort request %s at the engine (%s: %s); cancelling it", rid, type(e).__name__, e)
        return False
