"""Client for Search-R1's retrieval API: ``POST /retrieve {"queries": [...], "topk": k,
"return_scores": bool}`` -> ``{"result": [[doc, ...], ...]}``.

A document is ``{"contents": "\\"Title\\"\\ntext", ...}``, or ``{"document": {...}, "score": s}``
with ``return_scores``. Connection errors, timeouts and 5xx replies are retried with backoff; a
retriever still failing after its retries, or answering with something that is not this shape,
raises :class:`~agentrl.errors.EnvError` (the episode ends as ``env_error``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from agentrl.errors import EnvError


class RetrieverClient:
    """Search-R1's ``/retrieve`` over HTTP.

    Args:
        url: the endpoint, e.g. ``http://127.0.0.1:8000/retrieve``.
        topk: passages per query.
        timeout_s: limit on one attempt.
        retries: attempts after the first, for connection errors, timeouts and 5xx replies.
        backoff_s: wait before retry ``i`` is ``backoff_s * 2**i``.
    """

    def __init__(self, url: str, *, topk: int = 3, timeout_s: float = 5.0, retries: int = 2, backoff_s: float = 0.2) -> None:
        self.url, self.topk, self.timeout_s, self.retries, self.backoff_s = url, topk, timeout_s, retries, backoff_s
        self.failed_attempts = 0
        self._session: aiohttp.ClientSession | None = None

    async def search(self, query: str) -> list[str]:
        """The top passages for ``query``, each as ``"(Title: ...) text"``."""
        payload = {"queries": [query], "topk": self.topk, "return_scores": False}
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                reply = await self._post(payload)
            except (aiohttp.ClientError, TimeoutError) as e:
                self.failed_attempts += 1
                last = e
                continue
            return [format_passage(doc) for doc in _documents(reply)]
        raise EnvError(f"retriever {self.url} failed {self.retries + 1} times: {type(last).__name__}: {last}")

    async def _post(self, payload: dict[str, Any]) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        async with self._session.post(self.url, json=payload) as response:
            if response.status >= 500:
                raise aiohttp.ClientResponseError(response.request_info, (), status=response.status, message=await response.text())
            if response.status != 200:
                raise EnvError(f"retriever {self.url} refused the query ({response.status}): {(await response.text())[:200]}")
            return await response.json(content_type=None)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _documents(reply: Any) -> list[dict[str, Any]]:
    try:
        docs = reply["result"][0]
        return [d.get("document", d) for d in docs if isinstance(d, dict)] if isinstance(docs, list) else _bad(reply)
    except (KeyError, IndexError, TypeError):
        return _bad(reply)


def _bad(reply: Any) -> list[dict[str, Any]]:
    raise EnvError(f"retriever reply is not Search-R1's {{'result': [[doc, ...]]}}: {str(reply)[:200]}")


def format_passage(doc: dict[str, Any]) -> str:
    """``"(Title: T) text"`` from a Search-R1 document whose ``contents`` is ``'"T"\\ntext'``."""
    contents = str(doc.get("contents", ""))
    title, _, text = contents.partition("\n")
    return f"(Title: {title.strip().strip(chr(34))}) {text.strip()}" if text else contents.strip()
