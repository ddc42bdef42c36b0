"""SGLang's native ``/generate`` wire format, as :class:`~agentrl.policies.sglang.SGLangPolicy` speaks it.

Facts read from SGLang 0.5.23's sources; ``scripts/sglang_protocol_fixtures.py`` extracts them into
``tests/fixtures/sglang/`` and the tests hold this module to them:

* Request (``GenerateReqInput``): ``input_ids``, ``sampling_params``, ``return_logprob: true``,
  ``rid``. Sampling params use SGLang's names (``temperature``, ``top_p``, ``top_k``,
  ``max_new_tokens``, ``stop``, ``stop_token_ids``, ``ignore_eos``, ``sampling_seed``) with the
  JSON types its contract gate checks, plus ``no_stop_trim: true``. ``sampling_seed`` is a signed
  64-bit integer.
* Response item ``{"text", "output_ids", "meta_info"}``. ``output_ids`` run *through* the stop
  (the eos or stop token, the tokens spelling a stop string): SGLang trims only ``text``.
  ``meta_info.output_token_logprobs`` holds one ``[logprob, token_id, text-or-null]`` per output
  token. ``meta_info.finish_reason`` is ``{"type": "stop", "matched": token id | [ids] | string}``,
  ``{"type": "length", "length": N}``, ``{"type": "abort", "message", ...}`` (``status_code`` and
  ``err_type`` too unless it was aborted in the waiting queue), or ``null`` while unfinished.
  A token outside the vocabulary (NaN logits) ends the request with ``matched: "NaN happened"``.
* ``meta_info.weight_version`` is a string (the server default is ``"default"``), absent from
  older servers. A request that ran across a weight update lists ``weight_versions``:
  ``[{"version", "start", "end"}, ...]`` spans over its output tokens.
* Errors: ``{"error": {"message": ...}}`` (a ``ValueError`` in the server, 400),
  ``{"error": "<contract violation>"}`` (400) or FastAPI's ``{"detail": ...}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agentrl.errors import PolicyError
from agentrl.policies.base import Generation, SamplingParams

NAN_STOP = "NaN happened"
"""The ``matched`` string SGLang reports when a step produced a token id outside the vocabulary."""
META_NUMBERS = ("prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency")
"""``meta_info`` numbers copied into :attr:`Generation.meta`."""


def request_body(input_ids: Sequence[int], sampling: SamplingParams, rid: str) -> dict[str, Any]:
    """The ``/generate`` body for one request, ``return_logprob`` on and stop strings kept."""
    params: dict[str, Any] = {
        "max_new_tokens": int(sampling.max_new_tokens), "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p), "top_k": int(sampling.top_k), "ignore_eos": bool(sampling.ignore_eos),
        "no_stop_trim": True,
    }
    if sampling.stop:
        params["stop"] = list(sampling.stop)
    if sampling.stop_token_ids:
        params["stop_token_ids"] = [int(t) for t in sampling.stop_token_ids]
    if sampling.seed is not None:
        if not -(2**63) <= sampling.seed < 2**63:
            raise ValueError(f"seed must be a signed 64-bit integer (SGLang's sampling_seed), got {sampling.seed}")
        params["sampling_seed"] = int(sampling.seed)
    return {"input_ids": [int(t) for t in input_ids], "sampling_params": params, "return_logprob": True, "rid": rid}


def parse_generation(body: Any, *, stop: Sequence[str] = ()) -> tuple[Generation, int | None]:
    """The :class:`Generation` in one ``/generate`` response item, and the newest weight version
    it names (``None`` when the server reports none).

    A request that ran across a weight update gets the *oldest* version of its tokens as
    ``weight_version`` (the staleness that matters) and the newest in
    ``meta["weight_version_newest"]``.

    Raises:
        PolicyError: the item is unfinished, malformed, or ended on a NaN/out-of-vocabulary
            token (``stop`` lists the caller's stop strings, which may legitimately match).
    """
    if not isinstance(body, dict) or not isinstance(body.get("meta_info"), dict):
        raise PolicyError(f"SGLang answered {_preview(body)}, expected an object with 'meta_info'")
    meta = body["meta_info"]
    reason, matched = _finish(meta.get("finish_reason"), stop)
    ids, logprobs = _tokens(body.get("output_ids"), meta.get("output_token_logprobs"))
    versions = [_version(span.get("version")) for span in meta.get("weight_versions") or [] if isinstance(span, dict)]
    if not versions and meta.get("weight_version") is not None:
        versions = [_version(meta["weight_version"])]
    extra = {k: float(meta[k]) for k in META_NUMBERS if isinstance(meta.get(k), (int, float))}
    if len(set(versions)) > 1:
        extra["weight_version_newest"] = float(versions[-1])
    generation = Generation(ids, logprobs, reason, versions[0] if versions else 0, matched, extra)
    return generation, versions[-1] if versions else None


def error_reason(text: str) -> str:
    """The server's reason in an error body (SGLang's or FastAPI's shape, else the raw text)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "(empty body)"
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return str(error)
    return text.strip()[:500]


def _finish(finish: Any, stop: Sequence[str]) -> tuple[Any, str | int | None]:
    if finish is None:
        raise PolicyError("SGLang returned an unfinished generation (finish_reason null); a partial turn is never used as complete")
    kind = finish.get("type") if isinstance(finish, dict) else None
    if kind in ("length", "abort"):
        return kind, None
    if kind != "stop":
        raise PolicyError(f"SGLang answered finish_reason {_preview(finish)}; expected type 'stop', 'length' or 'abort'")
    matched = finish.get("matched")
    if matched == NAN_STOP and NAN_STOP not in stop:
        raise PolicyError(f"SGLang ended the request on a token outside the vocabulary (finish_reason matched {NAN_STOP!r}): NaN logits?")
    if isinstance(matched, list):  # several stop tokens in one step; the last ended the turn
        matched = matched[-1] if matched else None
    return "stop", matched


def _tokens(output_ids: Any, entries: Any) -> tuple[list[int], list[float]]:
    """Sampled ids and log-probs from ``output_token_logprobs``, checked against ``output_ids``."""
    if not isinstance(entries, list):
        raise PolicyError("SGLang's meta_info has no output_token_logprobs list; was return_logprob dropped on the way?")
    try:
        ids = [int(e[1]) for e in entries]
        logprobs = [float(e[0]) for e in entries]
    except (TypeError, ValueError, IndexError) as e:
        raise PolicyError(f"output_token_logprobs entries must be [logprob, token_id, text]: {_preview(entries)}") from e
    if output_ids is None:  # older servers, or a client that asked for no output ids
        return ids, logprobs
    n = len(output_ids) if isinstance(output_ids, list) else -1
    if n < 0 or len(ids) < n or ids[:n] != output_ids:
        raise PolicyError(f"SGLang's output_ids {_preview(output_ids)} disagree with its output_token_logprobs ids {_preview(ids)}")
    return ids[:n], logprobs[:n]


def _version(raw: Any) -> int:
    """agentrl's integer weight version from SGLang's string (``"default"`` is the initial 0)."""
    if raw == "default":
        return 0
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise PolicyError(
            f"SGLang reports weight_version {raw!r}; agentrl numbers weights 0, 1, 2, ... "
            "(launch the server with --weight-version 0, or leave its default)"
        ) from None


def _preview(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "..."
