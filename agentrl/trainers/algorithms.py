"""GRPO-family algorithms: advantage estimators, KL estimators and the policy loss.

One module for every trainer backend (PyTorch, Megatron-Core), pure torch, no engine or Ray.
Formulas and defaults follow slime, so its flags mean the same here:

Advantages (one scalar per sample, then broadcast to its trained tokens):
  * ``grpo`` / ``gspo``: ``(r - mean_g) / (std_g + 1e-6)`` over the sample's group (unbiased
    std; ``std_normalization=False`` keeps only the mean, as Dr. GRPO).
  * ``reinforce_plus_plus_baseline``: ``r - mean_g``, then whitened over every trained token.
  * ``reinforce_plus_plus``: ``r`` (slime's ``gamma`` = 1 and ``kl_coef`` = 0: the reward reaches
    every token undiscounted), then whitened over every trained token.

Policy loss per token (``ratio = exp(logp - old_logp)``, per token; for GSPO the ratio is
``exp(mean_t(logp - old_logp))`` of the whole sequence, on each of its tokens)::

    pg = max(-ratio * A, -clamp(ratio, 1 - eps_clip, 1 + eps_clip_high) * A)
    pg = min(pg, -eps_clip_c * A)            where A < 0, with dual clip (eps_clip_c > 1)
    pg = pg * clamp(exp(old_logp - rollout_logp), tis_clip_low, tis_clip)     with --use-tis
    loss = reduce(pg) + kl_loss_coef * reduce(kl(logp, ref_logp)) - entropy_coef * reduce(entropy)

``reduce`` is a weighted token sum whose weights make it correct under packing, gradient
accumulation and data parallel (see :func:`loss_weights`): by default the mean over tokens of
each sample, then the mean over the samples of the optimizer step (slime's default); with
``calculate_per_token_loss``, the mean over every trained token of the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

AdvantageEstimator = Literal["grpo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"]
KLType = Literal["k1", "k2", "k3", "low_var_kl"]
ADVANTAGE_ESTIMATORS: tuple[str, ...] = ("grpo", "gspo", "reinforce_plus_plus", "reinforce_plus_plus_baseline")
KL_TYPES: tuple[str, ...] = ("k1", "k2", "k3", "low_var_kl")
GROUP_STD_EPS = 1e-6
WHITEN_EPS = 1e-8


# ----------------------------------------------------------------------------- advantages
def sample_advantages(
    rewards: Tensor, group_ids: Tensor, estimator: AdvantageEstimator, *, std_normalization: bool = True
) -> Tensor:
    """Per-sample advantages before broadcasting to tokens.

    Args:
        rewards: ``[B]`` episode returns; excluded samples (env errors, aborts) must already be
            removed so they take no part in their group's baseline.
        group_ids: ``[B]`` the group (task) of each sample.
        estimator: which estimator (see the module docstring).
        std_normalization: divide by the group's std (``grpo``/``gspo`` only).

    Returns:
        ``[B]`` advantages. A group of one sample gets advantage 0 under the group estimators.
    """
    rewards = rewards.double()
    if estimator == "reinforce_plus_plus":
        return rewards.float()
    out = torch.empty_like(rewards)
    for g in group_ids.unique():
        members = group_ids == g
        group = rewards[members]
        centered = group - group.mean()
        if estimator in ("grpo", "gspo") and std_normalization:
            std = group.std() if group.numel() > 1 else group.new_zeros(())
            centered = centered / (std + GROUP_STD_EPS)
        out[members] = centered
    return out.float()


def whiten(values: Tensor, mask: Tensor) -> Tensor:
    """Normalise ``values`` to zero mean and unit (unbiased) variance over tokens where ``mask``."""
    mask = mask.to(values.dtype)
    n = mask.sum()
    mean = (values * mask).sum() / n
    var = ((values - mean) ** 2 * mask).sum() / n
    if n > 1:
        var = var * n / (n - 1)
    return (values - mean) * torch.rsqrt(var + WHITEN_EPS)


# ----------------------------------------------------------------------------- KL
def kl_estimate(logp: Tensor, ref_logp: Tensor, kl_type: KLType) -> Tensor:
    """Per-token KL(pi || ref) estimators on sampled tokens, with ``lr = logp - ref_logp``.

    ``k1``: ``lr``; ``k2``: ``lr^2 / 2``; ``k3``: ``exp(-lr) - 1 + lr``; ``low_var_kl``: ``k3``
    clamped to [-10, 10].
    """
    log_ratio = logp.float() - ref_logp.float()
    if kl_type == "k1":
        return log_ratio
    if kl_type == "k2":
        return log_ratio.square() / 2
    if kl_type in ("k3", "low_var_kl"):
        kl = torch.exp(-log_ratio) - 1 + log_ratio
        return kl.clamp(-10, 10) if kl_type == "low_var_kl" else kl
    raise ValueError(f"unknown kl_loss_type {kl_type!r}; choose one of {KL_TYPES}")


# ----------------------------------------------------------------------------- reduction
def loss_weights(
    loss_mask: Tensor, sample_index: Tensor, sample_tokens: Tensor, *, step_samples: int, step_tokens: int, per_token: bool
) -> Tensor:
    """Weights ``w`` such that ``sum(w * x)`` over every micro-batch of an optimizer step is the
    step's loss reduction of per-token values ``x``.

    Args:
        loss_mask: ``[T]`` 1 on trained tokens of this micro-batch.
        sample_index: ``[T]`` which sample of the step each token belongs to.
        sample_tokens: ``[S]`` trained-token count of each sample of the step (whole sample).
        step_samples: samples in the optimizer step, over all micro-batches and data-parallel ranks.
        step_tokens: trained tokens in the optimizer step, likewise.
        per_token: ``--calculate-per-token-loss`` (token mean) instead of the per-sample mean.
    """
    mask = loss_mask.float()
    if per_token:
        return mask / max(step_tokens, 1)
    return mask / sample_tokens[sample_index].clamp(min=1).float() / max(step_samples, 1)


# ----------------------------------------------------------------------------- policy loss
@dataclass(frozen=True)
class LossConfig:
    """The loss flags (slime's names and defaults).

    Attributes:
        eps_clip: lower clip range of the ratio (``1 - eps_clip``).
        eps_clip_high: upper clip range (``1 + eps_clip_high``); ``None`` means ``eps_clip``.
        eps_clip_c: dual-clip constant (> 1) bounding the loss of negative advantages; ``None`` off.
        sequence_ratio: GSPO's sequence-level ratio (set by ``--advantage-estimator gspo``).
        use_kl_loss: add ``kl_loss_coef * KL(pi || ref)``; needs reference log-probs.
        kl_loss_coef: weight of the KL term.
        kl_loss_type: estimator, see :func:`kl_estimate`.
        entropy_coef: weight of the entropy bonus (subtracted from the loss).
        use_tis: truncated importance sampling against the rollout engine's log-probs.
        tis_clip, tis_clip_low: clip range of the TIS weight.
    """

    eps_clip: float = 0.2
    eps_clip_high: float | None = None
    eps_clip_c: float | None = None
    sequence_ratio: bool = False
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: KLType = "k1"
    entropy_coef: float = 0.0
    use_tis: bool = False
    tis_clip: float = 2.0
    tis_clip_low: float = 0.0

    def __post_init__(self) -> None:
        if self.eps_clip_c is not None and self.eps_clip_c <= 1:
            raise ValueError(f"eps_clip_c must be > 1 (dual clip), got {self.eps_clip_c}")
        if self.kl_loss_type not in KL_TYPES:
            raise ValueError(f"unknown kl_loss_type {self.kl_loss_type!r}; choose one of {KL_TYPES}")


@dataclass
class LossInputs:
    """Per-token tensors of one micro-batch, all ``[T]`` (response tokens of packed samples).

    Attributes:
        logp: current policy log-probs (with grad).
        old_logp: log-probs of the policy that the ratio is taken against (no grad).
        advantages: per-token advantages.
        weights: reduction weights from :func:`loss_weights` (zero off the trained tokens).
        sample_index: local sample id of each token (for GSPO's sequence ratio), ``[T]``.
        rollout_logp: the engine's log-probs (for TIS and the mismatch metric), or ``None``.
        ref_logp: reference-model log-probs (for the KL loss), or ``None``.
        entropy: per-token entropy of the current policy (for the bonus), or ``None``.
    """

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    weights: Tensor
    sample_index: Tensor
    rollout_logp: Tensor | None = None
    ref_logp: Tensor | None = None
    entropy: Tensor | None = None


def policy_loss(x: LossInputs, cfg: LossConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one micro-batch (already scaled for accumulation) and its metrics.

    Metrics are reduced with the same weights, so summing them over the micro-batches of a step
    gives the step's value: ``pg_loss``, ``pg_clipfrac``, ``ppo_kl`` (``old - new``), ``kl_loss``,
    ``entropy``, ``tis``, ``tis_clipfrac``, ``train_rollout_logprob_abs_diff``.
    """
    w = x.weights
    log_ratio = x.logp - x.old_logp
    if cfg.sequence_ratio:
        log_ratio = _per_sample_mean(log_ratio, w, x.sample_index)
    ratio = torch.exp(log_ratio)
    high = cfg.eps_clip if cfg.eps_clip_high is None else cfg.eps_clip_high
    pg1 = -ratio * x.advantages
    pg2 = -ratio.clamp(1 - cfg.eps_clip, 1 + high) * x.advantages
    pg = torch.maximum(pg1, pg2)
    metrics = {"pg_clipfrac": _reduce((pg2 > pg1).float(), w), "ppo_kl": _reduce(-log_ratio.detach(), w)}
    if cfg.eps_clip_c is not None:
        dual = torch.minimum(pg, -cfg.eps_clip_c * x.advantages)
        pg = torch.where(x.advantages < 0, dual, pg)
    if x.rollout_logp is not None:
        metrics["train_rollout_logprob_abs_diff"] = _reduce((x.old_logp - x.rollout_logp).abs(), w)
    if cfg.use_tis:
        if x.rollout_logp is None:
            raise ValueError("use_tis needs the rollout log-probs")
        tis = torch.exp(x.old_logp - x.rollout_logp)
        clipped = tis.clamp(cfg.tis_clip_low, cfg.tis_clip)
        metrics |= {"tis": _reduce(clipped, w), "tis_clipfrac": _reduce((clipped != tis).float(), w)}
        pg = pg * clipped
    loss = _reduce(pg, w)
    metrics["pg_loss"] = loss.detach()
    if cfg.use_kl_loss:
        if x.ref_logp is None:
            raise ValueError("use_kl_loss needs reference log-probs")
        kl = _reduce(kl_estimate(x.logp, x.ref_logp, cfg.kl_loss_type), w)
        metrics["kl_loss"] = kl.detach()
        loss = loss + cfg.kl_loss_coef * kl
    if x.entropy is not None:
        entropy = _reduce(x.entropy, w)
        metrics["entropy"] = entropy.detach()
        loss = loss - cfg.entropy_coef * entropy
    return loss, metrics


TRAINED_TOKEN_METRICS = ("ppo_kl", "tis", "tis_clipfrac", "train_rollout_logprob_abs_diff")
"""Metrics that describe the trained tokens rather than add up the loss; see :func:`over_kept`."""


def over_kept(metrics: dict[str, float], *, counted: int, kept: int) -> dict[str, float]:
    """A step's metrics when only ``kept`` of its ``counted`` samples (tokens, with
    ``--calculate-per-token-loss``) were computed, the rest having zero advantage (nothing to
    add to the gradient): :data:`TRAINED_TOKEN_METRICS` become means over what was kept, where
    the loss's weights would make them ``kept / counted`` of that. Both counts are the step's,
    over every data-parallel rank; the loss terms (``pg_loss``, ``pg_clipfrac``) are unchanged."""
    if kept in (0, counted):
        return metrics
    return {k: v * counted / kept if k.removeprefix("train/") in TRAINED_TOKEN_METRICS else v for k, v in metrics.items()}


def _reduce(values: Tensor, weights: Tensor) -> Tensor:
    return (values * weights).sum()


def _per_sample_mean(values: Tensor, weights: Tensor, sample_index: Tensor) -> Tensor:
    """Mean of ``values`` over each sample's trained tokens, broadcast back to its tokens."""
    trained = (weights != 0).to(values.dtype)
    size = int(sample_index.max()) + 1 if sample_index.numel() else 0
    sums = values.new_zeros(size).index_add(0, sample_index, values * trained)
    counts = values.new_zeros(size).index_add(0, sample_index, trained).clamp(min=1)
    return (sums / counts)[sample_index]
