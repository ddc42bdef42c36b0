"""The part of slime's ``Sample`` that slime plug-ins read, so ``--custom-rm-path`` functions
written for slime (``async def reward(args, sample, **kwargs) -> float``) run unchanged."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """A slime-shaped view of one episode (field names as in ``slime.utils.types.Sample``)."""

    class Status(enum.Enum):
        PENDING = "pending"
        COMPLETED = "completed"
        TRUNCATED = "truncated"
        ABORTED = "aborted"
        FAILED = "failed"

    prompt: str | list[dict[str, Any]] = ""
    response: str = ""
    label: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)
    index: int | None = None
    tokens: list[int] = field(default_factory=list)
    response_length: int = 0
    reward: float | dict[str, Any] | None = None
    status: Status = Status.COMPLETED
