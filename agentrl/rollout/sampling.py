"""Over-sampling and dynamic sampling with abort and partial rollout, with slime's meanings
(``--over-sampling-batch-size``, ``--dynamic-sampling-filter-path``, ``--partial-rollout``,
``--buffer-filter-path``, ``--mask-offpolicy-in-partial-rollout``).

:func:`collect_groups` fills one rollout step with exactly ``target`` groups:

1. While fewer than ``target`` groups are launched and not dropped, it launches
   ``over_sampling_batch_size`` more: groups from the partial-rollout buffer first (its filter
   picks them), then new tasks.
2. As each group ends, the dynamic filter judges it. A dropped group is counted under its reason
   and frees its slot (which may start another round of step 1); a kept group is collected.
3. With ``target`` groups kept, everything still in flight is aborted through an
   :class:`~agentrl.rollout.interrupt.Interrupt` (engine abort by request id, else cancellation).
   With partial rollout the unfinished groups go to the buffer, their suspended episodes keeping
   env and tokens; without it they are dropped and their envs closed.

Invariants: exactly ``target`` groups come back, in launch order, each with every sample ended;
no request of the step is in flight when it returns; every env it opened is closed, except those
of suspended episodes it put in the buffer. On an error or a cancellation it aborts, closes every
env it holds (buffered groups it took included), and re-raises.

Unlike slime, groups that ended but were not needed (the batch was already full) count as
leftovers: buffered with partial rollout, dropped without.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from agentrl.envs.core import Task
from agentrl.errors import ConfigError, DataError
from agentrl.rollout.filters import GroupFilter, apply_filter
from agentrl.rollout.interrupt import Interrupt
from agentrl.rollout.partial import BufferedGroup, Member, PartialRolloutBuffer
from agentrl.rollout.runner import INTERRUPTED, RolloutRunner, SuspendedEpisode
from agentrl.rollout.trajectory import Trajectory, check_trainable

TaskSource = Callable[[int], Sequence[Task]]
"""``next_tasks(n)`` -> the next ``n`` tasks of the dataset."""


@dataclass
class CollectedGroups:
    """What one rollout step collected.

    Attributes:
        groups: exactly ``target`` groups, in launch order; each is ``n_samples_per_prompt``
            trajectories in sample order.
        metrics: ``dynamic_filter/drop_<reason>`` (groups dropped by reason, slime's names) and
            ``over_sampling/*``: ``groups_launched``, ``groups_from_buffer``, ``groups_dropped``,
            ``groups_leftover`` (in flight or unneeded at the abort), ``episodes_aborted`` (not
            ended at the abort), ``requests_aborted`` (generation requests stopped), and with
            partial rollout ``partial_rollout/buffer_groups`` (after the step) and
            ``partial_rollout/offpolicy_masked_tokens``.
    """

    groups: list[list[Trajectory]]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def trajectories(self) -> list[Trajectory]:
        """The groups flattened, so consecutive ``n_samples_per_prompt`` form a group."""
        return [t for group in self.groups for t in group]


async def collect_groups(
    runner: RolloutRunner,
    next_tasks: TaskSource,
    *,
    target: int,
    over_sampling_batch_size: int | None = None,
    dynamic_filter: GroupFilter | None = None,
    filter_args: Any = None,
    buffer: PartialRolloutBuffer | None = None,
    mask_offpolicy: bool = False,
    step: int = 0,
    desc: str | None = None,
) -> CollectedGroups:
    """Collect ``target`` groups that pass ``dynamic_filter``; see the module docstring.

    Args:
        runner: plays the episodes (its config gives the group size and the concurrency).
        next_tasks: the task source.
        target: groups to return (slime's ``--rollout-batch-size``).
        over_sampling_batch_size: groups per launch round; ``None`` means ``target``.
        dynamic_filter: judges each ended group (see :mod:`agentrl.rollout.filters`); ``None``
            keeps every group.
        filter_args: the filter's first argument (the training config).
        buffer: the partial-rollout buffer; ``None`` turns partial rollout off.
        mask_offpolicy: leave tokens sampled in earlier steps out of the loss.
        step: this rollout step, recorded in each trajectory's ``rollout_steps``.
        desc: label of a progress bar of kept groups (with drops and launches); ``None`` for none.

    Raises:
        ConfigError: ``target`` < 1, ``over_sampling_batch_size`` < ``target``, or
            ``mask_offpolicy`` without a buffer; a filter broke its contract.
        DataError: the task source gave no tasks.
        TrainingError: the first ``target`` groups judged had no episode that can be trained on
            (every one failed), with the first failure's error and traceback.
    """
    if target < 1:
        raise ConfigError(f"--rollout-batch-size must be >= 1, got {target}")
    over = target if over_sampling_batch_size is None else over_sampling_batch_size
    if over < target:
        raise ConfigError(f"--over-sampling-batch-size {over} must be >= --rollout-batch-size {target}")
    if mask_offpolicy and buffer is None:
        raise ConfigError("--mask-offpolicy-in-partial-rollout needs --partial-rollout")
    collection = _Collection(runner, next_tasks, target, over, dynamic_filter, filter_args, buffer, mask_offpolicy, step)
    with tqdm(total=target, desc=desc, unit="group", leave=False, dynamic_ncols=True, disable=desc is None) as collection.progress:
        return await collection.run()


@dataclass
class _Launch:
    order: int
    task: Task
    members: list[Member]  # as launched: the objects to close if the step fails
    start_step: int


class _Collection:
    """The state of one :func:`collect_groups` call."""

    def __init__(self, runner: RolloutRunner, next_tasks: TaskSource, target: int, over: int, dynamic_filter: GroupFilter | None,
                 filter_args: Any, buffer: PartialRolloutBuffer | None, mask_offpolicy: bool, step: int) -> None:
        self.runner, self.next_tasks, self.target, self.over = runner, next_tasks, target, over
        self.dynamic_filter, self.filter_args = dynamic_filter, filter_args
        self.buffer, self.mask_offpolicy, self.step = buffer, mask_offpolicy, step
        self.interrupt = Interrupt(keep_partial=buffer is not None)
        self.limit = asyncio.Semaphore(runner.config.concurrency)
        self.in_flight: dict[asyncio.Task[list[Member]], _Launch] = {}
        self.kept: list[tuple[int, list[Trajectory]]] = []
        self.failed_so_far: list[Trajectory] | None = []  # None once an episode that can be trained on ended
        self.remaining = 0  # groups launched and not dropped (slime's remaining_batch_size)
        self.launched = 0
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.progress: tqdm[Any] | None = None

    async def run(self) -> CollectedGroups:
        try:
            while len(self.kept) < self.target:
                while self.remaining < self.target:
                    self._launch_round()
                await self._judge_next()
            leftovers = await self._abort()
        except BaseException:
            await self._fail()
            raise
        for launch, members in leftovers:
            await self._leftover(launch, members)
        self.kept.sort(key=lambda kept: kept[0])
        return CollectedGroups([group for _, group in self.kept], self._metrics())

    def _launch_round(self) -> None:
        """Launch ``over`` groups: from the buffer first, then new tasks."""
        taken = self.buffer.take(self.over, self.step) if self.buffer is not None else []
        for group in taken:
            self._launch(group.task, group.members, group.start_step)
        self.counts["groups_from_buffer"] += len(taken)
        tasks = list(self.next_tasks(self.over - len(taken))) if len(taken) < self.over else []
        if not taken and not tasks:
            raise DataError("the task source gave no tasks; over-sampling needs a source that does not run dry")
        n = self.runner.config.n_samples_per_prompt
        for task in tasks:
            self._launch(task, [SuspendedEpisode(task, k) for k in range(n)], self.step)

    def _launch(self, task: Task, members: list[Member], start_step: int) -> None:
        play = asyncio.create_task(self._play_group(members))
        self.in_flight[play] = _Launch(self.launched, task, list(members), start_step)
        self.launched += 1
        self.remaining += 1

    async def _play_group(self, members: list[Member]) -> list[Member]:
        async with asyncio.TaskGroup() as group:
            plays = [group.create_task(self._play_member(m)) for m in members]
        return [p.result() for p in plays]

    async def _play_member(self, member: Member) -> Member:
        if isinstance(member, Trajectory):  # it ended in an earlier step
            if self.mask_offpolicy:
                masked = sum(segment.mask() for segment in member.segments)
                member.metrics["offpolicy_masked_tokens"] = member.metrics.get("offpolicy_masked_tokens", 0) + masked
            return member
        async with self.limit:
            return await self.runner.resume_episode(member, self.interrupt, step=self.step, mask_offpolicy=self.mask_offpolicy)

    async def _judge_next(self) -> None:
        """Wait for groups to end and judge them, in launch order, until the batch is full."""
        done, _ = await asyncio.wait(self.in_flight, return_when=asyncio.FIRST_COMPLETED)
        for play in sorted(done, key=lambda p: self.in_flight[p].order):
            if len(self.kept) >= self.target:
                return  # the rest stay in flight and are leftovers
            launch = self.in_flight.pop(play)
            group = [m for m in play.result() if isinstance(m, Trajectory)]
            assert len(group) == len(launch.members), "a group ended with an unfinished episode before the abort"
            self._judge(launch, group)

    def _judge(self, launch: _Launch, group: list[Trajectory]) -> None:
        if self.failed_so_far is not None:  # a batch of groups whose every episode failed: stop, do not relaunch forever
            self.failed_so_far = self.failed_so_far + group if all(t.excluded for t in group) else None
            if self.failed_so_far is not None and len(self.failed_so_far) >= self.target * len(group):
                check_trainable(self.failed_so_far, self.step + 1)
        verdict = apply_filter(self.dynamic_filter, self.filter_args, group)
        if verdict.keep or (verdict.keep_when_insufficient and self.remaining <= self.target):
            self.kept.append((launch.order, group))
        else:
            self.drops[verdict.reason or str(getattr(self.dynamic_filter, "__name__", "dynamic_filter"))] += 1
            self.remaining -= 1
        if self.progress is not None:
            self.progress.n = len(self.kept)
            self.progress.set_postfix(launched=self.launched, dropped=sum(self.drops.values()))

    async def _abort(self) -> list[tuple[_Launch, list[Member]]]:
        """Abort what is in flight and wait for it to stop; the leftovers in launch order."""
        self.counts["requests_aborted"] = await self.interrupt.abort()
        plays = sorted(self.in_flight, key=lambda p: self.in_flight[p].order)
        results = await asyncio.gather(*plays)
        leftovers = [(self.in_flight[p], members) for p, members in zip(plays, results, strict=True)]
        self.in_flight.clear()
        return leftovers

    async def _leftover(self, launch: _Launch, members: list[Member]) -> None:
        """Buffer an unfinished group (partial rollout) or drop it."""
        self.counts["groups_leftover"] += 1
        self.counts["episodes_aborted"] += sum(isinstance(m, SuspendedEpisode) or m.error == INTERRUPTED for m in members)
        group = BufferedGroup(launch.task, members, launch.start_step)
        if self.buffer is not None:
            self.buffer.add([group])
        else:
            await group.aclose()

    async def _fail(self) -> None:
        """On an error: stop everything and close every env this step holds."""
        if not self.interrupt.aborted:
            await self.interrupt.abort()
        for play in self.in_flight:
            play.cancel()
        await asyncio.gather(*self.in_flight, return_exceptions=True)
        for launch in self.in_flight.values():
            await BufferedGroup(launch.task, launch.members, launch.start_step).aclose()

    def _metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = {f"dynamic_filter/drop_{reason}": n for reason, n in sorted(self.drops.items())}
        metrics |= {
            "over_sampling/groups_launched": self.launched,
            "over_sampling/groups_dropped": sum(self.drops.values()),
            **{f"over_sampling/{k}": self.counts[k] for k in ("groups_from_buffer", "groups_leftover", "episodes_aborted", "requests_aborted")},
        }
        if self.buffer is not None:
            metrics["partial_rollout/buffer_groups"] = len(self.buffer)
            metrics["partial_rollout/offpolicy_masked_tokens"] = sum(
                t.metrics.get("offpolicy_masked_tokens", 0) for _, group in self.kept for t in group
            )
        return metrics
