"""The policy contract: token ids in, token ids and log-probs out.

Every inference backend (the embedded engine, an SGLang server behind sglang-router, a scripted
policy in tests) implements :class:`Policy`. The rollout runner talks to nothing else.

Log-prob convention (SGLang's default, ``SGLANG_RETURN_ORIGINAL_LOGPROB`` unset): the log-prob
reported for a sampled token is ``log_softmax(logits / temperature)[token]``, i.e. *after*
temperature scaling and *before* top-k / top-p / min-p truncation. For greedy decoding
(temperature below 1e-6) it is ``log_softmax(logits)[token]``. The trainer recomputes
log-probs of the same distribution, so the two compare token by token.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import torch

from agentrl.envs.core import FinishReason

GREEDY_TEMPERATURE = 1e-6
"""Temperatures below this decode greedily (as SGLang rewrites them to ``top_k=1``)."""
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
"""The seeds SGLang's ``sampling_seed`` accepts: a signed 64-bit integer."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn; field names and defaults follow SGLang's ``sampling_params``.

    Attributes:
        max_new_tokens: upper bound on generated tokens for this turn.
        temperature: softmax temperature; below 1e-6 means greedy.
        top_p: nucleus sampling mass in (0, 1]; 1 keeps every token.
        top_k: keep the k most likely tokens; -1 keeps every token.
        stop: non-empty strings that end the turn; the generated tokens that spell them are kept.
        stop_token_ids: token ids (>= 0) that end the turn (besides the model's eos); kept in the
            output.
        ignore_eos: keep generating past the eos token.
        seed: per-request seed (SGLang's ``sampling_seed``, a signed 64-bit integer); the same
            seed, prompt and weights give the same tokens. ``None`` draws from the engine's
            generator.

    Every value is checked on construction (types, ranges, finiteness), so an invalid one
    never reaches an engine step, whichever path built it.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        """Refuse what no engine step can serve: ``ValueError`` naming the field, what it must be
        and what arrived. ``stop`` and ``stop_token_ids`` may be any sequence but a string."""
        seed_ok = self.seed is None or (_is_int(self.seed) and SEED_MIN <= self.seed <= SEED_MAX)
        for name, label, expected, ok in (
            ("max_new_tokens", "max_new_tokens", "an integer >= 0", _is_int(self.max_new_tokens) and self.max_new_tokens >= 0),
            ("temperature", "temperature", "a finite number >= 0", _is_real(self.temperature) and self.temperature >= 0),
            ("top_p", "top_p", "a finite number in (0, 1]", _is_real(self.top_p) and 0 < self.top_p <= 1),
            ("top_k", "top_k", "an integer, -1 (all) or >= 1", _is_int(self.top_k) and (self.top_k == -1 or self.top_k >= 1)),
            ("ignore_eos", "ignore_eos", "a boolean", isinstance(self.ignore_eos, bool)),
            ("seed", "seed (SGLang's sampling_seed)", "an integer in [-2**63, 2**63)", seed_ok),
        ):
            if not ok:
                raise ValueError(f"{label} must be {expected}, got {describe_value(getattr(self, name))}")
        if isinstance(self.stop, str):
            raise ValueError(f"stop must be a tuple of strings, got one string {self.stop!r}; wrap it: ({self.stop!r},)")
        for stop in self.stop:
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop must hold non-empty strings, got {describe_value(stop)}")
        for token in self.stop_token_ids:
            if not _is_int(token) or token < 0:
                raise ValueError(f"stop_token_ids must hold integers >= 0, got {describe_value(token)}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1


@dataclass(frozen=True)
class Generation:
    """One finished generation request.

    Attributes:
        token_ids: the sampled tokens, verbatim, including a matched eos or stop token and the
            tokens spelling a matched stop string. Shape ``[N]``.
        logprobs: log-prob of each sampled token (see the module docstring). Shape ``[N]``.
        finish_reason: ``"stop"`` (eos, stop token or stop string), ``"length"`` (hit
            ``max_new_tokens``) or ``"abort"`` (cancelled; the tokens are a partial turn).
        weight_version: version of the weights that produced the tokens.
        matched_stop: the stop string or token id that ended the turn, when one did.
    """

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason
    weight_version: int = 0
    matched_stop: str | int | None = None
    meta: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError(
                f"Generation has {len(self.token_ids)} token ids but {len(self.logprobs)} logprobs"
            )


class Policy(ABC):
    """An inference backend the rollout runner samples from."""

    @abstractmethod
    async def generate(
        self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None
    ) -> Generation:
        """Continue ``input_ids`` by one turn.

        Args:
            input_ids: the whole context so far, as token ids (prompt, earlier turns, bridges).
            sampling: how to sample.
            rid: request id, unique among requests in flight; lets the caller abort it and lets a
                router keep one episode on one engine.

        Returns:
            The sampled continuation with its log-probs (see the module docstring).

        Raises:
            agentrl.errors.PolicyError: the engine failed or refused the request (a prompt longer
                than :attr:`context_length`, say); the runner aborts that episode.
        """

    async def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, weight_version: int
    ) -> None:
        """Load new weights (Hugging Face parameter names) and set the weight version.

        Requests already in flight finish on the weights they started with or are aborted,
        never on a mix. Backends that cannot load weights raise ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot load weights")

    async def abort(self, rid: str) -> bool:
        """End request ``rid`` early: its :meth:`generate` returns ``finish_reason="abort"`` with
        the tokens sampled so far (possibly none), never raises for it.

        Safe for any ``rid``: one that is unknown, already finished or already aborted changes
        nothing and returns False.

        Returns:
            Whether a request with that id was in flight and is now ending.

        Raises:
            NotImplementedError: this backend cannot abort requests (the default; see
                :attr:`can_abort`). Callers cancel the ``generate`` call instead.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot abort requests; cancel its generate call instead")

    @property
    def can_abort(self) -> bool:
        """Whether :meth:`abort` works here: True when a subclass implements it."""
        return type(self).abort is not Policy.abort

    @property
    def context_length(self) -> int | None:
        """Most tokens one request may hold, prompt and output together; ``None`` when this
        backend does not know (its engine then refuses a prompt that is too long)."""
        return None

    @property
    def weight_version(self) -> int:
        """Version of the weights new requests will be served with."""
        return 0

    async def aclose(self) -> None:  # noqa: B027 - a no-op default: most policies hold nothing to release
        """Release the backend's resources; safe to call twice."""

    async def __aenter__(self) -> Policy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def describe_value(value: Any) -> str:
    """What arrived, for error messages: its type and (shortened) value, e.g. ``float nan``."""
    return f"{type(value).__name__} {value!r:.80}"
