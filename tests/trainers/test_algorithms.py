"""Advantage estimators, KL estimators and the policy loss against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.trainers.algorithms import LossConfig, LossInputs, kl_estimate, loss_weights, policy_loss, sample_advantages, whiten

GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2])
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 5.0])


def test_grpo_normalises_by_the_unbiased_group_std():
    adv = sample_advantages(REWARDS, GROUPS, "grpo")
    std0 = math.sqrt(1 / 3)  # rewards 1,0,0,1: mean .5, unbiased variance 1/3
    std1 = math.sqrt(0.25)  # 1,1,1,0: mean .75, unbiased variance .75*.25*4/3 = .25
    expected = [0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0, 0.25 / std1, 0.25 / std1, 0.25 / std1, -0.75 / std1, 0.0]
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=0)
    assert sample_advantages(REWARDS, GROUPS, "gspo").tolist() == adv.tolist()


def test_grpo_without_std_and_the_baseline_estimator_subtract_the_group_mean():
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75, 0.0])
    torch.testing.assert_close(sample_advantages(REWARDS, GROUPS, "grpo", std_normalization=False), expected)
    torch.testing.assert_close(sample_advantages(REWARDS, GROUPS, "reinforce_plus_plus_baseline"), expected)


def test_reinforce_plus_plus_keeps_raw_rewards_and_identical_groups_give_zero():
    torch.testing.assert_close(sample_advantages(REWARDS, GROUPS, "reinforce_plus_plus"), REWARDS)
    assert sample_advantages(torch.ones(4), torch.zeros(4, dtype=torch.long), "grpo").tolist() == [0.0] * 4


def test_whiten_uses_masked_tokens_only():
    out = whiten(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 1, 1, 0]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 2.0]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("k1", math.log(2)), ("k2", math.log(2) ** 2 / 2), ("k3", 0.5 - 1 + math.log(2)), ("low_var_kl", 0.5 - 1 + math.log(2))],
)
def test_kl_estimators(kind, expected):
    value = kl_estimate(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]), kind)
    assert value.item() == pytest.approx(expected, abs=1e-6)


def test_low_var_kl_is_clamped():
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([20.0]), "low_var_kl").item() == 10.0
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([20.0]), "k3").item() > 10.0


def inputs(ratios, advantages, samples, **kw):
    logp = torch.log(torch.tensor(ratios, dtype=torch.float32)).requires_grad_()
    sample_index = torch.tensor(samples)
    counts = torch.bincount(sample_index).float()
    weights = loss_weights(torch.ones(len(ratios)), sample_index, counts, step_samples=len(counts), step_tokens=len(ratios), per_token=False)
    return LossInputs(logp=logp, old_logp=torch.zeros(len(ratios)), advantages=torch.tensor(advantages), weights=weights, sample_index=sample_index, **kw)


def test_clipped_loss_with_asymmetric_clip_by_hand():
    # ratio 1.5, A=+1 -> clipped to 1.28: -1.28 | ratio .5, A=+1 -> -0.5 | ratio 1.1, A=-1 -> 1.1 | ratio .7, A=-1 -> clipped .8
    x = inputs([1.5, 0.5, 1.1, 0.7], [1.0, 1.0, -1.0, -1.0], [0, 0, 1, 1])
    loss, m = policy_loss(x, LossConfig(eps_clip=0.2, eps_clip_high=0.28))
    assert loss.item() == pytest.approx((-1.28 - 0.5 + 1.1 + 0.8) / 4, abs=1e-6)
    assert m["pg_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()  # clipped tokens get no gradient; unclipped get -ratio*A*weight
    torch.testing.assert_close(x.logp.grad, torch.tensor([0.0, -0.5 * 0.25, 1.1 * 0.25, 0.0]))


def test_dual_clip_bounds_negative_advantages():
    x = inputs([5.0, 5.0], [-1.0, 1.0], [0, 1])
    loss, _ = policy_loss(x, LossConfig(eps_clip=0.2, eps_clip_c=3.0))
    # A<0: max(5, 1.2) = 5 -> min(5, 3) = 3 ; A>0: max(-5, -1.2) = -1.2 (dual clip does not apply)
    assert loss.item() == pytest.approx((3.0 - 1.2) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="eps_clip_c must be > 1"):
        LossConfig(eps_clip_c=1.0)


def test_truncated_importance_sampling_weights_the_policy_gradient():
    rollout = torch.tensor([-math.log(3.0), -math.log(0.5)])  # old - rollout = log 3 -> clipped to 2, and log .5
    x = inputs([1.0, 1.0], [1.0, 1.0], [0, 1], rollout_logp=rollout)
    loss, m = policy_loss(x, LossConfig(use_tis=True, tis_clip=2.0))
    assert loss.item() == pytest.approx((-1.0 * 2.0 - 1.0 * 0.5) / 2, abs=1e-6)
    assert m["tis_clipfrac"].item() == pytest.approx(0.5)
    assert m["train_rollout_logprob_abs_diff"].item() == pytest.approx((math.log(3) + math.log(2)) / 2, abs=1e-6)


def test_gspo_uses_the_sequence_mean_log_ratio_on_every_token():
    x = inputs([math.exp(0.2), math.exp(-0.1), math.exp(0.5)], [1.0, 1.0, 1.0], [0, 0, 1])
    loss, _ = policy_loss(x, LossConfig(eps_clip=1.0, sequence_ratio=True))
    seq0 = math.exp(0.05)
    assert loss.item() == pytest.approx((-(seq0 + seq0) / 2 - math.exp(0.5)) / 2, abs=1e-6)


def test_kl_loss_and_entropy_bonus_enter_with_their_coefficients():
    x = inputs([1.0, 1.0], [0.0, 0.0], [0, 1], ref_logp=torch.log(torch.tensor([0.5, 0.5])), entropy=torch.tensor([2.0, 4.0]))
    loss, m = policy_loss(x, LossConfig(use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="k1", entropy_coef=0.01))
    assert m["kl_loss"].item() == pytest.approx(math.log(2), abs=1e-6)
    assert m["entropy"].item() == pytest.approx(3.0)
    assert loss.item() == pytest.approx(0.1 * math.log(2) - 0.01 * 3.0, abs=1e-6)


def test_per_sample_versus_per_token_reduction():
    mask = torch.ones(4)
    sample_index = torch.tensor([0, 1, 1, 1])
    counts = torch.tensor([1.0, 3.0])
    values = torch.tensor([4.0, 1.0, 2.0, 3.0])
    per_sample = loss_weights(mask, sample_index, counts, step_samples=2, step_tokens=4, per_token=False)
    per_token = loss_weights(mask, sample_index, counts, step_samples=2, step_tokens=4, per_token=True)
    assert (per_sample * values).sum().item() == pytest.approx((4.0 + (1 + 2 + 3) / 3) / 2)
    assert (per_token * values).sum().item() == pytest.approx((4 + 1 + 2 + 3) / 4)


def test_weights_split_over_micro_batches_sum_to_the_step_reduction():
    # the same sample seen from two micro-batches: weights use whole-sample counts and step totals
    counts = torch.tensor([2.0, 2.0])
    first = loss_weights(torch.ones(2), torch.tensor([0, 0]), counts, step_samples=2, step_tokens=4, per_token=False)
    second = loss_weights(torch.tensor([1.0, 0.0]), torch.tensor([1, 1]), counts, step_samples=2, step_tokens=4, per_token=False)
    assert first.sum().item() + second.sum().item() == pytest.approx(0.5 + 0.25)
