"""A reward model behind HTTP, slime's ``remote_rm`` protocol: ``POST {prompt, response, label}``
answered by a number (or ``{"reward": number}``)."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp

from agentrl.errors import AgentRLError
from agentrl.rewards.types import RewardInput

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class RewardModelError(AgentRLError):
    """The remote reward model failed or answered something that is not a reward."""


class RemoteRewardModel:
    """Scores responses with a remote reward model; one instance per run (it owns a session:
    call :meth:`aclose` when done).

    Args:
        url: the endpoint.
        timeout_s: per-request timeout.
        retries: attempts for transient failures (connection errors, timeouts, 429, 5xx), with
            capped exponential backoff and jitter; a 4xx fails at once.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, retries: int = 3) -> None:
        self.url, self.retries = url, retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, x: RewardInput) -> float:
        """Score one episode (a :data:`~agentrl.rewards.types.RewardFn`)."""
        payload = {"prompt": x.prompt, "response": x.response, "label": x.label}
        for attempt in range(1, self.retries + 1):
            try:
                return await self._post(payload)
            except (TimeoutError, aiohttp.ClientConnectionError, _Retryable) as e:
                if attempt == self.retries:
                    raise RewardModelError(f"reward model {self.url} failed after {attempt} attempts: {e}") from e
                delay = min(2 ** (attempt - 1), 8) * (0.5 + random.random() / 2)
                log.warning("reward model %s: %s; retrying in %.1fs (attempt %d/%d)", self.url, e, delay, attempt, self.retries)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _post(self, payload: dict[str, Any]) -> float:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        async with self._session.post(self.url, json=payload) as response:
            if response.status in RETRYABLE_STATUS:
                raise _Retryable(f"HTTP {response.status}")
            if response.status >= 400:
                raise RewardModelError(f"reward model {self.url} answered HTTP {response.status}: {(await response.text())[:200]}")
            body = await response.json(content_type=None)
        value = body.get("reward") if isinstance(body, dict) else body
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise RewardModelError(f"reward model {self.url} answered {body!r:.200}, expected a number or {{'reward': number}}")
        return float(value)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Retryable(Exception):
    pass
