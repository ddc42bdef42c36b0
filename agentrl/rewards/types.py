"""What a reward function takes and is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RewardInput:
    """What a reward function sees of a finished episode.

    ``task_index`` is the task's row in its dataset (``Task.index``; ``None`` where unknown): a
    slime reward function sees it as ``sample.group_index``, shared by the samples of one prompt.
    """

    prompt: str
    response: str
    label: Any
    metadata: dict[str, Any]
    task_index: int | None = None


RewardFn = Callable[[RewardInput], Awaitable[float]]
