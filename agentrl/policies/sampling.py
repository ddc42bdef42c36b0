"""Per-row token choice and stop rules for a batch of requests decoded together.

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

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from agentrl.envs.core import FinishReason
from agentrl.policies.base import GREEDY_TEMPERATURE, SamplingParams

TOP_P_CANDIDATES = 256
"""Top-p rows first look for their nucleus among this many most likely tokens (exact: rows whose
nucleus is larger fall back to a full sort)."""


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
    temperatures = torch.tensor([s.temperature for s in samplers], device=logits.device)
    logprobs = torch.log_softmax(logits / temperatures[:, None], dim=-1)  # [B, vocab]
    tokens = torch.empty(len(samplers), dtype=torch.long, device=logits.device)
    greedy = [i for i, s in enumerate(samplers) if s.greedy]
    plain = [i for i, s in enumerate(samplers) if not s.greedy and not s.truncates]
    truncated = [i for i, s in enumerate(samplers) if not s.greedy and s.truncates]
    if greedy:
        tokens[greedy] = logits[greedy].argmax(dim=-1)
    if plain:
        u = _uniforms([samplers[i] for i in plain], logits.device)
        tokens[plain] = _inverse_cdf(logprobs[plain].exp(), u)
    if truncated:
        rows = [samplers[i] for i in truncated]
        tokens[truncated] = _sample_truncated(logprobs[truncated].exp(), rows)
    chosen = logprobs.gather(1, tokens[:, None])[:, 0]
    return tokens.tolist(), chosen.tolist()


def _uniforms(samplers: Sequence[RowSampler], device: torch.device) -> torch.Tensor:
    """One U[0, 1) draw from each row's generator, ``[R]``."""
    draws = [torch.rand((), generator=s.generator).item() for s in samplers]
    return torch.tensor(draws, dtype=torch.float32, device=device)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index ``j`` of each row with ``cdf[j-1] <= u * total < cdf[j]``: a draw from ``probs``
    (rows need not sum to 1; zero-mass entries are never picked)."""
    cdf = probs.cumsum(dim=-1)
    target = u[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=probs.shape[-1] - 1)


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
        return cls(frozenset(stop_ids), tuple(s for s in params.stop if s), max_new_tokens)

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
            text = tokenizer.decode(token_ids[-window:])
            for stop in self.stop_strings:
                if stop in text:
                    return "stop", stop
        if len(token_ids) >= self.max_new_tokens:
            return "length", None
        return None
