"""The partial-rollout buffer (slime's ``--partial-rollout``): groups an abort left unfinished.

When a rollout step has its groups, the groups still in flight are aborted. With partial rollout
they are kept here instead of thrown away: each member is a finished
:class:`~agentrl.rollout.trajectory.Trajectory` or a
:class:`~agentrl.rollout.runner.SuspendedEpisode` (env open, tokens kept exactly). The next step
takes groups from here before it draws new tasks and continues them where they stopped.

Which groups are taken is the *buffer filter* (slime's ``--buffer-filter-path``), with slime's
signature::

    def buffer_filter(args, rollout_id: int, buffer: list[BufferedGroup], num_samples: int) -> list[BufferedGroup]

It returns at most ``num_samples`` groups of ``buffer``; the buffer removes them (whether or not
the filter deleted them itself, as slime's ``pop_first`` does). The default, :func:`pop_first`,
takes the oldest first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from agentrl.envs.core import Task
from agentrl.errors import ConfigError
from agentrl.plugins import load_function
from agentrl.rollout.runner import SuspendedEpisode
from agentrl.rollout.trajectory import Trajectory

Member = Trajectory | SuspendedEpisode
"""One sample of a group: ended (a trajectory) or not yet (a suspended episode)."""


@dataclass
class BufferedGroup:
    """A group waiting in the buffer.

    Attributes:
        task: the group's task.
        members: one per sample, in sample order.
        start_step: the step the group was first launched in (slime's ``start_rollout_id``).
    """

    task: Task
    members: list[Member]
    start_step: int

    @property
    def suspended(self) -> list[SuspendedEpisode]:
        """The members that have not ended."""
        return [m for m in self.members if isinstance(m, SuspendedEpisode)]

    async def aclose(self) -> None:
        """Close the envs its suspended members hold; the group cannot be resumed afterwards."""
        for episode in self.suspended:
            await episode.aclose()


BufferFilter = Callable[[Any, int, list[BufferedGroup], int], list[BufferedGroup]]
"""``(args, rollout_id, buffer, num_samples) -> groups to take``; see the module docstring."""


def pop_first(args: Any, rollout_id: int, buffer: list[BufferedGroup], num_samples: int) -> list[BufferedGroup]:
    """The oldest ``num_samples`` groups, first in first out (slime's default buffer filter)."""
    taken = buffer[:num_samples]
    del buffer[:num_samples]
    return taken


SLIME_BUFFER_FILTERS: dict[str, BufferFilter] = {"slime.rollout.data_source.pop_first": pop_first}
"""slime's built-in buffer filter path, mapped to the same filter over buffered groups."""


def load_buffer_filter(path: str) -> BufferFilter:
    """The buffer filter ``path`` names (``pkg.module:function``, ``pkg.module.function`` or
    slime's ``pop_first`` path).

    Raises:
        ConfigError: it cannot be imported (the message names ``--buffer-filter-path``).
    """
    return SLIME_BUFFER_FILTERS.get(path) or load_function(path, flag="--buffer-filter-path")


class PartialRolloutBuffer:
    """Unfinished groups carried from one rollout step to the next. See the module docstring.

    Args:
        buffer_filter: picks the groups to take; :func:`pop_first` by default.
        args: handed to the filter as its first argument (the training config).
    """

    def __init__(self, buffer_filter: BufferFilter = pop_first, *, args: Any = None) -> None:
        self.buffer_filter = buffer_filter
        self.args = args
        self._groups: list[BufferedGroup] = []

    def __len__(self) -> int:
        return len(self._groups)

    @property
    def groups(self) -> tuple[BufferedGroup, ...]:
        """The groups waiting, oldest first."""
        return tuple(self._groups)

    def add(self, groups: Iterable[BufferedGroup]) -> None:
        """Append groups (they are the newest)."""
        self._groups.extend(groups)

    def take(self, num_samples: int, step: int) -> list[BufferedGroup]:
        """Remove and return the groups the buffer filter picks, at most ``num_samples``.

        Raises:
            ConfigError: the filter returned more groups, or groups not in the buffer.
        """
        if num_samples <= 0 or not self._groups:
            return []
        before = list(self._groups)
        taken = list(self.buffer_filter(self.args, step, self._groups, num_samples))
        waiting = {id(g) for g in before}
        if len(taken) > num_samples or len({id(g) for g in taken}) != len(taken) or any(id(g) not in waiting for g in taken):
            self._groups = before
            raise ConfigError(
                f"--buffer-filter-path {getattr(self.buffer_filter, '__qualname__', self.buffer_filter)!r} must return at most "
                f"num_samples={num_samples} distinct groups of the buffer it was given; it returned {len(taken)}"
            )
        chosen = {id(g) for g in taken}
        self._groups = [g for g in before if id(g) not in chosen]
        return taken

    async def aclose(self) -> None:
        """Drop every group, closing the envs of their suspended episodes. Safe twice."""
        groups, self._groups = self._groups, []
        for group in groups:
            await group.aclose()
