"""What slime plug-ins import, so ``--custom-generate-function-path`` and ``--custom-rm-path``
functions written for slime run on agentrl unchanged.

=====================================  ==========================================
slime                                  here
=====================================  ==========================================
``slime.utils.types.Sample``           :class:`Sample` (:mod:`agentrl.compat.slime_types`)
``slime.rollout.sglang_rollout``       :class:`GenerateState`, :func:`generate` (slime's default)
``slime.utils.http_utils``             :func:`post`, :func:`get`
=====================================  ==========================================

Where slime itself is not installed, ``import slime.utils.types`` (and the other modules above,
plus ``slime.rollout.rm_hub`` and ``slime.rollout.filter_hub``) resolve to these, so plug-ins
need no change at all (:mod:`agentrl.compat.slime_imports`).

Contracts (slime 624b824):

* ``post(url, payload, max_retries=60, headers=None)`` POSTs JSON and returns the decoded JSON
  reply (the text when it is not JSON). Transient faults (connection errors, timeouts, 429, 5xx)
  are retried up to ``max_retries`` attempts in all with capped exponential backoff and jitter,
  each logged at warning level with "attempt k/N"; another 4xx fails at once
  (``aiohttp.ClientResponseError``). slime retries everything at a fixed 1 s.
* ``GenerateState(args)`` is slime's shared generation state: one instance per event loop (slime:
  one per process; an agentrl process may run several trainings one after another, each on its
  own loop). The first ``args`` it is built with wins, as in slime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import weakref
from argparse import Namespace
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, cast

import aiohttp
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from agentrl.compat.slime_types import Sample

__all__ = ["GenerateState", "Sample", "generate", "get", "post"]

log = logging.getLogger(__name__)
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.5, 4.0


# ---------------------------------------------------------------------- HTTP (slime.utils.http_utils)
async def post(url: str, payload: Mapping[str, Any] | None, max_retries: int = 60, headers: Mapping[str, str] | None = None) -> Any:
    """POST ``payload`` as JSON; the reply's JSON (or its text). See the module docstring.

    Raises:
        aiohttp.ClientResponseError: a 4xx other than 408/429, or the last attempt's error status.
        aiohttp.ClientError, TimeoutError: the last attempt's connection failure.
    """
    attempts = max(1, max_retries)
    for attempt in range(1, attempts + 1):
        try:
            return await _request("POST", url, payload, headers)
        except aiohttp.ClientResponseError as e:
            if e.status not in RETRYABLE_STATUS or attempt == attempts:
                raise
            reason: BaseException = e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
            if attempt == attempts:
                raise
            reason = e
        delay = min(BACKOFF_BASE_S * 2 ** (attempt - 1), BACKOFF_CAP_S) * (0.5 + random.random() / 2)
        log.warning("POST %s failed (%s); retrying in %.1fs (attempt %d/%d)", url, reason, delay, attempt, attempts)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def get(url: str) -> Any:
    """GET ``url``; the reply's JSON (slime's ``get``: no retries).

    Raises:
        aiohttp.ClientResponseError: an error status.
    """
    return await _request("GET", url, None, None)


async def _request(method: str, url: str, payload: Mapping[str, Any] | None, headers: Mapping[str, str] | None) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), trust_env=False) as session:
        body = None if method == "GET" else dict(payload or {})
        async with session.request(method, url, json=body, headers=dict(headers or {})) as response:
            if response.status >= 400:
                text = (await response.text())[:500]
                raise aiohttp.ClientResponseError(response.request_info, response.history, status=response.status,
                                                  message=f"{response.reason}: {text}", headers=response.headers)
            content = await response.read()
    try:
        return json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return content.decode(errors="replace")


# ---------------------------------------------------------------------- generation (slime.rollout.sglang_rollout)
class GenerateState:
    """slime's shared generation state, one per event loop (see the module docstring).

    Attributes:
        args: the namespace it was first built with.
        tokenizer: ``args.hf_checkpoint``'s tokenizer.
        processor: ``None`` (agentrl serves text models only).
        semaphore: bounds concurrent generations to ``args.sglang_server_concurrency`` per engine.
        sampling_params: SGLang sampling parameters from the ``--rollout-*`` flags (slime's keys).
        group_sampling_seeds: ``--rollout-seed + i`` for sample ``i`` of a group, with
            ``--sglang-enable-deterministic-inference``.
        dp_counts, dp_rank: slime's data-parallel-rank balancing counters.
        remaining_batch_size, pendings, aborted: slime's rollout-loop bookkeeping (reset by
            :meth:`reset`; agentrl's own loop does not use them).
    """

    _instances: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GenerateState]] = weakref.WeakKeyDictionary()
    _without_loop: ClassVar[GenerateState | None] = None

    def __new__(cls, args: Namespace) -> GenerateState:
        loop = _running_loop()
        existing = cls._instances.get(loop) if loop is not None else cls._without_loop
        if existing is not None:
            return existing
        state = super().__new__(cls)
        state._build(args)
        if loop is not None:
            cls._instances[loop] = state
        else:
            cls._without_loop = state
        return state

    def _build(self, args: Namespace) -> None:
        self.args = args
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(args.hf_checkpoint, trust_remote_code=True)
        self.processor: Any = None
        engines = max(1, int(getattr(args, "rollout_num_engines", 1) or 1))
        self.semaphore = asyncio.Semaphore(args.sglang_server_concurrency * engines)
        self.sampling_params: dict[str, Any] = default_sampling_params(args)
        if getattr(args, "sglang_enable_deterministic_inference", False):
            self.group_sampling_seeds = [args.rollout_seed + i for i in range(args.n_samples_per_prompt)]
        self.dp_counts = [0] * (getattr(args, "sglang_dp_size", None) or 1)
        self.dp_rank = 0
        self.reset()

    @contextlib.contextmanager
    def dp_rank_context(self) -> Iterator[int]:
        """Claim the least-loaded data-parallel rank for the duration of the block."""
        least = min(self.dp_counts)
        rank = random.choice([i for i, count in enumerate(self.dp_counts) if count == least])
        self.dp_counts[rank] += 1
        self.dp_rank = rank
        try:
            yield rank
        finally:
            self.dp_counts[rank] -= 1

    def reset(self) -> None:
        self.remaining_batch_size = 0
        self.pendings: set[asyncio.Task[Any]] = set()
        self.aborted = False


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def default_sampling_params(args: Namespace) -> dict[str, Any]:
    """slime's ``GenerateState.sampling_params``: SGLang's sampling keys from the rollout flags."""
    return {
        "temperature": args.rollout_temperature, "top_p": args.rollout_top_p, "top_k": args.rollout_top_k,
        "max_new_tokens": args.rollout_max_response_len, "stop": args.rollout_stop, "stop_token_ids": args.rollout_stop_token_ids,
        "skip_special_tokens": args.rollout_skip_special_tokens, "no_stop_trim": True, "spaces_between_special_tokens": False,
    }


async def generate(args: Namespace, sample: Sample, sampling_params: dict[str, Any]) -> Sample:
    """slime's default generate function: one ``/generate`` call on the sample's prompt tokens
    (``sample.tokens`` if set, else the encoded ``sample.prompt``), the reply appended as
    trainable tokens; a sample whose budget is spent is returned ``truncated`` unchanged.

    Raises:
        ValueError: the sample is neither pending nor aborted, or its response already exceeds
            ``max_new_tokens``.
    """
    state = GenerateState(args)
    if sample.status not in (Sample.Status.PENDING, Sample.Status.ABORTED):
        raise ValueError(f"generate takes a pending or aborted sample, got status {sample.status.value}")
    prompt_ids = list(sample.tokens) if sample.tokens else state.tokenizer.encode(cast(str, sample.prompt), add_special_tokens=False)
    params = dict(sampling_params, max_new_tokens=sampling_params["max_new_tokens"] - sample.response_length)
    if params["max_new_tokens"] < 0:
        raise ValueError(f"max_new_tokens {params['max_new_tokens']} is below 0: the sample's response is longer than the budget")
    if params["max_new_tokens"] == 0:
        sample.status = Sample.Status.TRUNCATED
        return sample
    if not sample.tokens:
        sample.tokens = prompt_ids
    headers = {"X-SMG-Routing-Key": sample.session_id} if sample.session_id and getattr(args, "router_policy", None) == "consistent_hashing" else None
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"
    output = await post(url, {"input_ids": prompt_ids, "sampling_params": params, "return_logprob": True}, headers=headers)
    pairs = output["meta_info"].get("output_token_logprobs", [])
    sample.append_response_tokens(args, tokens=[p[1] for p in pairs], log_probs=[p[0] for p in pairs], trainable=True,
                                  meta_info=output["meta_info"], text=output["text"])
    return sample
