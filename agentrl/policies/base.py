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

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from agentrl.envs.core import FinishReason

GREEDY_TEMPERATURE = 1e-6
"""Temperatures below this decode greedily (as SGLang rewrites them to ``top_k=1``)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn; field names and defaults follow SGLang's ``sampling_params``.

    Attributes:
        max_new_tokens: upper bound on generated tokens for this turn.
        temperature: softmax temperature; below 1e-6 means greedy.
        top_p: nucleus sampling mass in (0, 1]; 1 keeps every token.
        top_k: keep the k most likely tokens; -1 keeps every token.
        stop: strings that end the turn; the generated tokens that spell them are kept.
        stop_token_ids: token ids that end the turn (besides the model's eos); kept in the output.
        ignore_eos: keep generating past the eos token.
        seed: per-request seed (SGLang's ``sampling_seed``); the same seed, prompt and weights
            give the same tokens. ``None`` draws from the engine's generator.
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
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ValueError(f"top_k must be -1 (all) or >= 1, got {self.top_k}")

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
            agentrl.errors.PolicyError: the engine failed; the runner aborts that episode.
        """

    async def update_weights(
        self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, weight_version: int
    ) -> None:
        """Load new weights (Hugging Face parameter names) and set the weight version.

        Requests already in flight finish on the weights they started with or are aborted,
        never on a mix. Backends that cannot load weights raise ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot load weights")

    @property
    def weight_version(self) -> int:
        """Version of the weights new requests will be served with."""
        return 0

    async def aclose(self) -> None:
        """Release the backend's resources; safe to call twice."""

    async def __aenter__(self) -> Policy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
