"""The part of slime's ``Sample`` that slime plug-ins read and write, so ``--custom-rm-path``
functions (``async def reward(args, sample, **kwargs) -> float``) and
``--custom-generate-function-path`` functions (``async def generate(args, sample,
sampling_params) -> Sample``) written for slime run unchanged."""

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
    loss_mask: list[int] | None = None
    rollout_log_probs: list[float] | None = None
    group_index: int | None = None
    session_id: str | None = None


async def post(url: str, payload: dict[str, Any], *, headers: dict[str, str] | None = None, timeout_s: float | None = None) -> Any:
    """POST ``payload`` as JSON and return the JSON reply, as ``slime.utils.http_utils.post`` does
    for generate functions; raises ``aiohttp.ClientResponseError`` on an HTTP error status."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session, session.post(url, json=payload, headers=headers) as response:
            response.raise_for_status()
            return await response.json()
