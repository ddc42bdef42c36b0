"""A local retrieval server with Search-R1's API, BM25 by ``bm25s``.

``POST /retrieve {"queries": [str, ...], "topk": k, "return_scores": bool}`` answers
``{"result": [[doc, ...], ...]}``, one list per query, best first; a document is
``{"id", "contents"}`` (``contents`` is ``'"Title"\\ntext'``, Search-R1's corpus format), or
``{"document": doc, "score": s}`` with ``return_scores``. Passages that share no term with the
query are left out, so a query can have no results. A body that is not this shape gets a 400 that
says why. ``GET /health`` answers 200 once the index is built.

The corpus is a JSONL file of Search-R1 documents (``{"id": ..., "contents": ...}``, or
``{"title", "text"}``), such as Search-R1's ``wiki-18.jsonl``. Binds to localhost by default.
Runs on the CPU only, also where an installed JAX sees a GPU (``JAX_PLATFORMS=cpu`` unless set).

    python -m envs_contrib.search_r1.server --corpus corpus.jsonl [--host 127.0.0.1] [--port 8000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

# bm25s tries JAX for its top-k at import; where JAX sees a GPU it would take 75% of its memory
# (JAX's preallocation) from the trainer and engines beside this CPU server. Keep JAX on the CPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import bm25s
from aiohttp import web

from agentrl.data import utf8_lines
from agentrl.errors import DataError

MAX_QUERIES = 512
MAX_TOPK = 100


def load_corpus(path: str | Path) -> list[dict[str, Any]]:
    """Search-R1 documents from a UTF-8 JSONL file; a bad line (or a byte that is not UTF-8) raises
    :class:`DataError` naming it."""
    docs = []
    for number, line in utf8_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "contents" not in row:
                row = {"id": row.get("id", str(number)), "contents": f'"{row["title"]}"\n{row["text"]}'}
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}:{number}: not a Search-R1 document ({{'contents'}} or {{'title', 'text'}}): {e}") from e
        docs.append({"id": str(row.get("id", number)), "contents": str(row["contents"])})
    if not docs:
        raise DataError(f"{path}: no documents")
    return docs


class BM25Index:
    """BM25 over the documents' contents (English stopwords removed)."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.bm25 = bm25s.BM25()
        self.bm25.index(bm25s.tokenize([d["contents"] for d in docs], stopwords="en", show_progress=False), show_progress=False)

    def search(self, queries: list[str], topk: int) -> list[list[tuple[dict[str, Any], float]]]:
        """The ``topk`` best documents of each query with their scores, best first."""
        k = min(topk, len(self.docs))
        indices, scores = self.bm25.retrieve(bm25s.tokenize(queries, stopwords="en", show_progress=False), k=k, show_progress=False)
        return [[(self.docs[int(i)], float(s)) for i, s in zip(row_i, row_s) if s > 0] for row_i, row_s in zip(indices, scores)]


def parse_request(body: Any) -> tuple[list[str], int, bool]:
    """``(queries, topk, return_scores)`` of a ``/retrieve`` body, or ValueError with the reason."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    queries = body.get("queries")
    if not isinstance(queries, list) or not queries or not all(isinstance(q, str) for q in queries):
        raise ValueError("'queries' must be a non-empty list of strings")
    if len(queries) > MAX_QUERIES:
        raise ValueError(f"at most {MAX_QUERIES} queries per request, got {len(queries)}")
    topk = body.get("topk", 3)
    if not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= MAX_TOPK:
        raise ValueError(f"'topk' must be an integer in [1, {MAX_TOPK}]")
    return_scores = body.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise ValueError("'return_scores' must be true or false")
    return queries, topk, return_scores


def make_app(index: BM25Index) -> web.Application:
    async def retrieve(request: web.Request) -> web.Response:
        try:
            queries, topk, with_scores = parse_request(await request.json())
        except ValueError as e:  # includes a body that is not JSON
            return web.json_response({"error": str(e)}, status=400)
        hits = await asyncio.to_thread(index.search, queries, topk)
        result = [[{"document": d, "score": s} if with_scores else d for d, s in row] for row in hits]
        return web.json_response({"result": result})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "documents": len(index.docs)})

    app = web.Application()
    app.add_routes([web.post("/retrieve", retrieve), web.get("/health", health)])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="Search-R1 JSONL corpus")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        docs = load_corpus(args.corpus)
    except (DataError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"indexing {len(docs)} documents from {args.corpus} ...", flush=True)
    web.run_app(make_app(BM25Index(docs)), host=args.host, port=args.port, print=lambda _: print(f"serving on http://{args.host}:{args.port}", flush=True))


if __name__ == "__main__":
    main()
