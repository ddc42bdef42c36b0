"""What a reward function takes and is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RewardInput:
    """What a reward function sees of a finished episode."""

    prompt: str
    response: str
    label: Any
    metadata: dict[str, Any]


RewardFn = Callable[[RewardInput], Awaitable[float]]
