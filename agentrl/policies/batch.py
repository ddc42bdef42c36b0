"""The running batch of the embedded engine: its rows, how each picks its tokens, when each stops.

:class:`DecodeBatch` is the synchronous core the engine's worker thread drives: each
:meth:`DecodeBatch.step` drops stopped rows, prefills newly admitted requests into free KV-cache
slots and decodes one token for every row; finished rows leave at once. Work that depends on one
request's input fails that request alone: a prefill group that raises fails its own requests
(the rows already running keep their cache slots), a stop check that raises fails its row. Only
the shared decode forward can fail a whole step.

:func:`sample_next` picks one token per row from a ``[B, vocab]`` logits batch where every row
has its own temperature, top-k, top-p and random stream, and reports each token's log-prob in the
convention of :mod:`agentrl.policies.base` (SGLang's default): ``log_softmax(logits / T)`` of the
chosen token, before top-k/top-p truncation; ``log_softmax(logits)`` for greedy rows.
Reproducibility: a sampled row draws exactly one uniform number per token from its own
``torch.Generator`` and turns it into a token by inverse-CDF over its (truncated) distribution,
so its tokens depend on its seed, prompt and weights only, never on the rows batched beside it
(up to floating-point ties).

:class:`StopRule` decides when a row's turn ends: eos or a stop token id (kept in the output),
a stop string found in the decoded text of the generated tokens (the tokens spelling it are
kept), or the token budget.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from agentrl.envs.core import FinishReason
from agentrl.errors import PolicyError
from agentrl.policies.base import GREEDY_TEMPERATURE, Generation, SamplingParams
from agentrl.policies.decoder import LeanDecoder

log = logging.getLogger(__name__)

MIN_SHARED_TOKENS = 64
"""A prompt prefix common to a prefill group is computed once when that saves at least this
many token computations (an extra forward pass costs about one weights read)."""

CDF_BLOCK = 128
"""Block size of the two-level inverse-CDF search (see :func:`_inverse_cdf`)."""

TOP_P_CANDIDATES = 256
"""Top-p rows first look for their nucleus among this many most likely tokens (exact: rows whose
nucleus is larger fall back to a full sort)."""


@dataclass(eq=False)
class Request:
    """What the batch needs of one ``generate`` call. Flags are set by the engine's loop and
    read by the worker between steps.

    Attributes:
        input_ids: the prompt.
        rule: when its turn ends.
        sampler: how it picks tokens.
        started: ``time.monotonic()`` when it arrived (for ``meta["e2e_latency"]``).
        cancelled: its caller stopped waiting: drop the row without a result.
        abort: end it now with ``"abort"`` and the tokens sampled so far.
    """

    input_ids: list[int]
    rule: StopRule
    sampler: RowSampler
    started: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    abort: bool = False


@dataclass(eq=False)
class Row:
    """A request in the batch: what it generated so far and how much of it is in the cache."""

    request: Request
    version: int  # weight version it runs on
    length: int  # positions stored in the KV cache
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def result(self, reason: FinishReason, matched: str | int | None = None) -> Generation:
        return Generation(
            token_ids=self.token_ids,
            logprobs=self.logprobs,
            finish_reason=reason,
            weight_version=self.version,
            matched_stop=matched,
            meta={
                "prompt_tokens": len(self.request.input_ids),
                "completion_tokens": len(self.token_ids),
                "e2e_latency": time.monotonic() - self.request.started,
            },
        )


Finished = list[tuple[Request, Generation | PolicyError]]
"""Requests that left the batch, each with its result or the error that failed it alone."""


class DecodeBatch:
    """The running rows, row ``i`` in KV-cache slot ``i``. Only the worker thread touches it."""

    def __init__(
        self, decoder: LeanDecoder, tokenizer: PreTrainedTokenizerBase, max_prefill_tokens: int
    ) -> None:
        self.decoder = decoder
        self.tokenizer = tokenizer
        self.max_prefill_tokens = max_prefill_tokens
        self.cache = decoder.new_cache()
        self.rows: list[Row] = []

    def step(self, admitted: Sequence[Request], version: int) -> tuple[Finished, int]:
        """Drop cancelled rows, prefill ``admitted``, decode one token for every row.

        Returns the requests that finished (with their results, or the error that failed them
        alone) and the rows still running. Raises only when the shared decode step fails.
        """
        done: Finished = []
        admitted = [r for r in admitted if not r.cancelled]
        with torch.inference_mode():
            self._drop_stopped(done)
            for group in prefill_groups(admitted, self.max_prefill_tokens):
                self._prefill_alone(group, version, done)
            if self.rows:
                self._decode(done)
        if not self.rows:
            self.cache.release()
        return done, len(self.rows)

    def abort_all(self) -> Finished:
        """End every row with ``"abort"`` and its partial tokens."""
        done: list[tuple[Request, Generation | PolicyError]] = [(row.request, row.result("abort")) for row in self.rows]
        self.reset()
        return done

    def reset(self) -> None:
        """Forget every row (after a failure; their requests are failed by the caller)."""
        self.rows.clear()
        self.cache.release()

    def _drop_stopped(self, done: Finished) -> None:
        stopped = [i for i, row in enumerate(self.rows) if row.request.cancelled or row.request.abort]
        for i in stopped:
            if not self.rows[i].request.cancelled:
                done.append((self.rows[i].request, self.rows[i].result("abort")))
        self._remove(stopped)

    def _prefill_alone(self, group: Sequence[Request], version: int, done: Finished) -> None:
        """:meth:`_prefill`; if it raises, fail ``group``'s requests and forget their rows (the
        slots they wrote are past the running rows', so those rows' cache is intact)."""
        first = len(self.rows)
        try:
            self._prefill(group, version, done)
        except Exception as e:
            log.exception("the prefill of %d request(s) failed", len(group))
            del self.rows[first:]
            done.extend((request, _failure("its prefill", e)) for request in group)

    def _prefill(self, group: Sequence[Request], version: int, done: Finished) -> None:
        """Prefill ``group`` into the next free slots; a prefix common to all its prompts is
        computed once (:meth:`LeanDecoder.share_prefix`)."""
        first = len(self.rows)
        slots = range(first, first + len(group))
        device = self.decoder.device
        shared = _shared_prefix([r.input_ids for r in group])
        width = max(len(r.input_ids) for r in group) - shared
        self.cache.reserve(slots.stop, shared + width)
        if shared:
            prefix = torch.tensor(group[0].input_ids[:shared], device=device)
            self.decoder.share_prefix(self.cache, prefix, slots)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        for i, request in enumerate(group):
            ids[i, : len(request.input_ids) - shared] = torch.tensor(request.input_ids[shared:])
        lengths = torch.tensor([len(r.input_ids) - shared for r in group], device=device)
        logits = self.decoder.prefill(self.cache, ids.to(device), lengths, first, start=shared)
        self.rows.extend(Row(r, version, len(r.input_ids)) for r in group)
        self._advance(range(first, len(self.rows)), logits, done)

    def _decode(self, done: Finished) -> None:
        device = self.decoder.device
        tokens = torch.tensor([row.token_ids[-1] for row in self.rows], device=device)
        positions = torch.tensor([row.length for row in self.rows], device=device)
        self.cache.reserve(len(self.rows), max(row.length for row in self.rows) + 1)
        logits = self.decoder.decode(self.cache, tokens, positions)
        for row in self.rows:
            row.length += 1
        self._advance(range(len(self.rows)), logits, done)

    def _advance(self, indices: range, logits: torch.Tensor, done: Finished) -> None:
        """Append one sampled token to rows ``indices``; move finished rows to ``done``."""
        rows = self.rows[indices.start : indices.stop]
        tokens, logprobs = sample_next(logits, [row.request.sampler for row in rows])
        finished = []
        for i, row, token, logprob in zip(indices, rows, tokens, logprobs):
            row.token_ids.append(token)
            row.logprobs.append(logprob)
            try:
                stop = row.request.rule.check(row.token_ids, self.tokenizer)
            except Exception as e:
                log.exception("checking a request's stop conditions failed")
                done.append((row.request, _failure("checking its stop conditions", e)))
                finished.append(i)
                continue
            if stop is not None:
                done.append((row.request, row.result(*stop)))
                finished.append(i)
        self._remove(finished)

    def _remove(self, indices: Sequence[int]) -> None:
        """Remove rows, filling each hole with the last row (highest index first)."""
        for i in sorted(indices, reverse=True):
            last = self.rows.pop()
            if i < len(self.rows):
                self.cache.move_row(len(self.rows), i, last.length)
                self.rows[i] = last


def _failure(what: str, cause: Exception) -> PolicyError:
    """The error of one request that failed alone in a step."""
    error = PolicyError(f"the embedded engine failed this request during {what}: {cause!r}")
    error.__cause__ = cause
    return error


def prefill_groups(requests: Sequence[Request], max_tokens: int) -> list[list[Request]]:
    """Split requests, by length, into groups whose padded size stays within ``max_tokens``
    (a longer prompt goes alone)."""
    groups: list[list[Request]] = []
    for request in sorted(requests, key=lambda r: len(r.input_ids)):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * len(request.input_ids) <= max_tokens:
            group.append(request)
        else:
            groups.append([request])
    return groups


def _shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the prefix all ``prompts`` share, worth computing once (else 0); every prompt
    keeps at least its last token out of it, for its own logits."""
    if len(prompts) < 2:
        return 0
    common = os.path.commonprefix([list(p) for p in prompts])  # noqa: RUF071 - element-wise on token lists, not paths
    n = min(len(common), min(len(p) for p in prompts) - 1)
    return n if n * (len(prompts) - 1) >= MIN_SHARED_TOKENS else 0


@dataclass(frozen=True)
class RowSampler:
    """How one row picks its tokens.

    Attributes:
        temperature: divides the logits for log-probs and sampling (1.0 for greedy requests).
        greedy: take the argmax instead of sampling.
        top_k: keep the k most likely tokens when sampling; -1 keeps all.
        top_p: keep the smallest set of most likely tokens whose mass reaches ``top_p``.
        generator: the row's random stream (one uniform draw per sampled token).
    """

    temperature: float
    greedy: bool
    top_k: int
    top_p: float
    generator: torch.Generator

    @classmethod
    def from_params(cls, params: SamplingParams, seed: int) -> RowSampler:
        """The sampler for ``params``; ``seed`` seeds the row's generator."""
        temperature = 1.0 if params.temperature < GREEDY_TEMPERATURE else params.temperature
        return cls(
            temperature=temperature,
            greedy=params.greedy,
            top_k=params.top_k,
            top_p=params.top_p,
            generator=torch.Generator().manual_seed(seed),
        )

    @property
    def truncates(self) -> bool:
        return self.top_k > 0 or self.top_p < 1.0


def sample_next(
    logits: torch.Tensor, samplers: Sequence[RowSampler]
) -> tuple[list[int], list[float]]:
    """One token per row and its log-prob.

    Args:
        logits: ``[B, vocab]`` fp32 logits of the next position.
        samplers: one per row.

    Returns:
        ``(tokens, logprobs)``, each of length ``B``.
    """
    temperatures = [s.temperature for s in samplers]
    if any(t != 1.0 for t in temperatures):
        logits = logits / torch.tensor(temperatures, device=logits.device)[:, None]
    logprobs = torch.log_softmax(logits, dim=-1)  # [B, vocab]
    tokens = torch.empty(len(samplers), dtype=torch.long, device=logits.device)
    greedy = [i for i, s in enumerate(samplers) if s.greedy]
    plain = [i for i, s in enumerate(samplers) if not s.greedy and not s.truncates]
    truncated = [i for i, s in enumerate(samplers) if not s.greedy and s.truncates]
    if greedy:
        tokens[greedy] = _rows(logprobs, greedy).argmax(dim=-1)
    if plain:
        u = _uniforms([samplers[i] for i in plain], logits.device)
        tokens[plain] = _inverse_cdf(_rows(logprobs, plain).exp(), u)
    if truncated:
        rows = [samplers[i] for i in truncated]
        tokens[truncated] = _sample_truncated(_rows(logprobs, truncated).exp(), rows)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist()


def _rows(t: torch.Tensor, index: list[int]) -> torch.Tensor:
    """``t[index]``, without a copy when ``index`` is every row in order."""
    return t if len(index) == t.shape[0] else t[index]


def _uniforms(samplers: Sequence[RowSampler], device: torch.device) -> torch.Tensor:
    """One U[0, 1) draw from each row's generator, ``[R]``."""
    draws = [torch.rand((), generator=s.generator).item() for s in samplers]
    return torch.tensor(draws, dtype=torch.float32, device=device)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index ``j`` of each row with ``cdf[j-1] <= u * total < cdf[j]``: a draw from ``probs``
    (rows need not sum to 1; zero-mass entries are never picked).

    Two levels, so that no cumulative sum runs over a whole vocabulary row: block sums locate
    the block holding the target mass, then a short cumsum inside that block locates the entry.
    """
    rows, n = probs.shape
    blocks = -(-n // CDF_BLOCK)
    if n % CDF_BLOCK:
        probs = F.pad(probs, (0, blocks * CDF_BLOCK - n))
    grid = probs.view(rows, blocks, CDF_BLOCK)
    block_cdf = grid.sum(dim=-1).cumsum(dim=-1)  # [R, blocks]
    target = u * block_cdf[:, -1]
    block = torch.searchsorted(block_cdf, target[:, None], right=True).clamp_(max=blocks - 1)
    before = torch.where(block > 0, block_cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inside = grid[torch.arange(rows, device=probs.device), block[:, 0]]  # [R, CDF_BLOCK]
    cdf = before + inside.cumsum(dim=-1)
    j = torch.searchsorted(cdf, target[:, None], right=True)
    # rounding can leave the target just past the block's own total: take its last live entry
    last_live = (inside > 0).cumsum(dim=-1).argmax(dim=-1, keepdim=True)
    return (block * CDF_BLOCK + torch.minimum(j, last_live))[:, 0]


def _sample_truncated(probs: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """Sample rows under top-k / top-p among their most likely tokens."""
    vocab = probs.shape[-1]
    top_k = torch.tensor([s.top_k if s.top_k > 0 else vocab for s in samplers], device=probs.device)
    top_p = torch.tensor([s.top_p for s in samplers], device=probs.device)
    wanted = max(s.top_k if s.top_k > 0 else TOP_P_CANDIDATES for s in samplers)
    values, indices = probs.topk(min(wanted, vocab), dim=-1)  # sorted, most likely first
    nucleus_missing = (top_k > values.shape[-1]) & (values.sum(dim=-1) < top_p)
    if bool(nucleus_missing.any()):
        values, indices = probs.sort(dim=-1, descending=True)
    rank = torch.arange(values.shape[-1], device=probs.device)
    mass_before = values.cumsum(dim=-1) - values
    keep = (rank[None, :] < top_k[:, None]) & (mass_before < top_p[:, None])
    u = _uniforms(samplers, probs.device)
    picked = _inverse_cdf(values * keep, u)
    return indices.gather(1, picked[:, None])[:, 0]


@dataclass(frozen=True)
class StopRule:
    """When one request's turn ends.

    Attributes:
        stop_token_ids: eos (unless ``ignore_eos``) and the request's stop token ids.
        stop_strings: non-empty stop strings.
        max_new_tokens: the token budget (already clamped to the context length).
    """

    stop_token_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    max_new_tokens: int

    @classmethod
    def from_params(
        cls, params: SamplingParams, eos_token_ids: Collection[int], max_new_tokens: int
    ) -> StopRule:
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(eos_token_ids)
        return cls(frozenset(stop_ids), tuple(params.stop), max_new_tokens)

    def check(
        self, token_ids: Sequence[int], tokenizer: PreTrainedTokenizerBase
    ) -> tuple[FinishReason, str | int | None] | None:
        """``(finish_reason, matched_stop)`` if the turn ends at the last of ``token_ids``.

        Called once per new token, so a stop string is looked for only in a window of recent
        tokens wide enough to spell it (4 tokens per character covers any UTF-8 split).
        A stop token or string on the last allowed token reports ``"stop"``, not ``"length"``.
        """
        last = token_ids[-1]
        if last in self.stop_token_ids:
            return "stop", last
        if self.stop_strings:
            window = 4 * max(len(s) for s in self.stop_strings) + 1
            text = tokenizer.decode(list(token_ids[-window:]))
            for stop in self.stop_strings:
                if stop in text:
                    return "stop", stop
        if len(token_ids) >= self.max_new_tokens:
            return "length", None
        return None
