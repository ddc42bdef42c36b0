"""Test policies that write their reply one token per event-loop turn and can stall mid-turn,
so that an abort lands mid-episode deterministically; and an env that counts its closes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from agentrl.envs import Task
from agentrl.policies import Generation, Policy, SamplingParams
from tests.rollout.tag_env import TagSearchEnv

Reply = Callable[[int, int, int], str]
"""``reply(task_index, sample_index, turn) -> text``."""
Stall = Callable[[int, int, int], int | None]
"""``stall(task_index, sample_index, turn)`` -> stall after that many tokens of the turn (until
``gate`` is set), or ``None``."""


class PacedPolicy(Policy):
    """Replies from a script, token by token; has no engine abort (only cancellation stops it).

    A request that repeats an earlier request's rid continues that turn after the tokens already
    written, and checks that the context ends with exactly those tokens.

    Attributes:
        requests: ``(rid, input_ids, max_new_tokens)`` of every request.
        emitted: tokens written so far, over all requests.
        cancelled: rids whose ``generate`` was cancelled.
        active: requests running now.
        gate: set it to release stalled requests.
        version: the weight version reported.
    """

    def __init__(self, tokenizer: Any, reply: Reply, stall: Stall = lambda *_: None) -> None:
        self.tokenizer, self.reply, self.stall = tokenizer, reply, stall
        self.requests: list[tuple[str, list[int], int]] = []
        self.emitted = 0
        self.cancelled: list[str] = []
        self.active = 0
        self.gate = asyncio.Event()
        self.version = 0
        self._written: dict[str, int] = {}  # rid -> tokens of the turn written before an abort
        self._stops: dict[str, asyncio.Event] = {}  # rid -> set by an engine abort

    @property
    def weight_version(self) -> int:
        return self.version

    async def generate(self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None) -> Generation:
        assert rid is not None
        self.requests.append((rid, list(input_ids), sampling.max_new_tokens))
        task_index, sample_index, _ = rid.split("-", 2)
        turn = int(rid.rsplit(":", 1)[1])
        ids = self.tokenizer.encode(self.reply(int(task_index), int(sample_index), turn), add_special_tokens=False)
        ids.append(self.tokenizer.eos_token_id)
        start = self._written.pop(rid, 0)
        if start:
            assert list(input_ids[-start:]) == ids[:start], "the continuation's context is not token-exact"
        stall_at = self.stall(int(task_index), int(sample_index), turn)
        self.active += 1
        self._stops[rid] = asyncio.Event()
        try:
            return await self._write(rid, ids, start, start + sampling.max_new_tokens, stall_at)
        except asyncio.CancelledError:
            self.cancelled.append(rid)
            raise
        finally:
            self.active -= 1
            del self._stops[rid]

    async def _write(self, rid: str, ids: list[int], start: int, end: int, stall_at: int | None) -> Generation:
        out: list[int] = []
        stop = self._stops[rid]
        for position in range(start, min(len(ids), end)):
            if position == stall_at and not self.gate.is_set():
                await _first_of(self.gate, stop)
            if stop.is_set():
                self._written[rid] = position
                return self._generation(ids, start, out, "abort")
            await asyncio.sleep(0)
            out.append(ids[position])
            self.emitted += 1
        finish = "stop" if start + len(out) == len(ids) else "length"
        return self._generation(ids, start, out, finish)

    def _generation(self, ids: list[int], start: int, out: list[int], finish: str) -> Generation:
        logprobs = [-0.01 * (start + i + 1) for i in range(len(out))]  # distinct per position
        return Generation(out, logprobs, finish, self.version, ids[-1] if finish == "stop" else None)  # type: ignore[arg-type]


async def _first_of(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


class AbortablePacedPolicy(PacedPolicy):
    """:class:`PacedPolicy` with an engine abort by rid that keeps the tokens written so far."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aborted: list[str] = []

    async def abort(self, rid: str) -> bool:
        if rid not in self._stops:
            return False
        self.aborted.append(rid)
        self._stops[rid].set()
        return True


class CountingEnv(TagSearchEnv):
    """:class:`TagSearchEnv` that records every instance and whether it was closed."""

    def __init__(self, registry: list[CountingEnv]) -> None:
        super().__init__()
        self.closed = 0
        self.task: Task | None = None
        registry.append(self)

    async def reset(self, task: Task, *, seed: int | None = None):
        self.task = task
        return await super().reset(task, seed=seed)

    async def close(self) -> None:
        self.closed += 1
