"""Batched token choice and stop rules, on synthetic logits and the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest
import torch

from agentrl.policies.base import SamplingParams
from agentrl.policies.batch import (
    TOP_P_CANDIDATES,
    RowSampler,
    StopRule,
    _inverse_cdf,
    _shared_prefix,
    sample_next,
)


def samplers(n: int, **params: object) -> list[RowSampler]:
    return [RowSampler.from_params(SamplingParams(**params), seed=i) for i in range(n)]  # type: ignore[arg-type]


@pytest.mark.parametrize("vocab", [256, 300])  # a whole number of CDF blocks, and not
def test_inverse_cdf_draws_each_entry_in_proportion_to_its_mass(vocab):
    torch.manual_seed(0)
    probs = torch.rand(vocab) * (torch.rand(vocab) > 0.3)  # unnormalised, ~30% zero mass
    draws = 20_000
    u = (torch.arange(draws) + 0.5) / draws  # an even grid over [0, 1)
    picked = _inverse_cdf(probs.expand(draws, vocab), u)
    counts = torch.bincount(picked, minlength=vocab).float()
    assert counts[probs == 0].sum() == 0
    torch.testing.assert_close(counts / draws, probs / probs.sum(), atol=2 / draws, rtol=0)


def test_logprobs_are_scaled_by_temperature_before_truncation():
    torch.manual_seed(1)
    logits = torch.randn(4, 1000) * 3
    rows = samplers(4, temperature=0.6, top_k=5, top_p=0.8)
    tokens, logprobs = sample_next(logits, rows)
    want = torch.log_softmax(logits / 0.6, dim=-1)[torch.arange(4), tokens]
    torch.testing.assert_close(torch.tensor(logprobs), want)


def test_greedy_takes_the_argmax_with_unscaled_logprobs():
    torch.manual_seed(2)
    logits = torch.randn(3, 500)
    tokens, logprobs = sample_next(logits, samplers(3, temperature=0.0))
    assert tokens == logits.argmax(dim=-1).tolist()
    want = torch.log_softmax(logits, dim=-1).max(dim=-1).values
    torch.testing.assert_close(torch.tensor(logprobs), want)


def test_top_k_only_picks_the_k_most_likely():
    torch.manual_seed(3)
    logits = torch.randn(1, 1000).expand(400, 1000)
    tokens, _ = sample_next(logits, samplers(400, top_k=3))
    assert set(tokens) == set(logits[0].topk(3).indices.tolist())


@pytest.mark.parametrize("flatness", [1.0, 0.01])  # a nucleus inside the first candidates, and one far larger
def test_top_p_picks_exactly_the_nucleus(flatness):
    torch.manual_seed(4)
    logits = (torch.randn(1, 2000) * 4 * flatness).expand(600, 2000)
    tokens, _ = sample_next(logits, samplers(600, top_p=0.5))
    probs, order = torch.softmax(logits[0], dim=-1).sort(descending=True)
    nucleus = order[: int(((probs.cumsum(0) - probs) < 0.5).sum())]
    assert set(tokens) <= set(nucleus.tolist())
    if flatness < 1:
        assert len(nucleus) > TOP_P_CANDIDATES  # the exact fallback was needed and taken
        assert max(order.tolist().index(t) for t in tokens) >= TOP_P_CANDIDATES


def test_a_seeded_row_draws_the_same_tokens_whatever_its_neighbours():
    torch.manual_seed(5)
    steps = [torch.randn(6, 800) for _ in range(5)]
    seeded = SamplingParams(seed=7)
    alone = RowSampler.from_params(seeded, 7)
    mixed = samplers(6, temperature=0.9, top_k=50)
    mixed[2] = RowSampler.from_params(seeded, 7)
    solo_tokens = [sample_next(logits[2:3], [alone])[0][0] for logits in steps]
    batched_tokens = [sample_next(logits, mixed)[0][2] for logits in steps]
    assert batched_tokens == solo_tokens


def test_stop_rule_precedence_and_matches(tokenizer):
    rule = StopRule.from_params(
        SamplingParams(stop=("sea",), stop_token_ids=(42,)), eos_token_ids=[2], max_new_tokens=4
    )
    assert rule.check([5, 42], tokenizer) == ("stop", 42)
    assert rule.check([5, 2], tokenizer) == ("stop", 2)
    assert rule.check([5, 6, 7, 2], tokenizer) == ("stop", 2)  # eos on the last allowed token
    assert rule.check([5, 6, 7, 8], tokenizer) == ("length", None)
    assert rule.check([5, 6], tokenizer) is None
    ids = tokenizer.encode("the blue s") + tokenizer.encode("ea!")
    assert rule.check(ids, tokenizer) == ("stop", "sea")  # spelled across two tokens
    ignoring = StopRule.from_params(SamplingParams(ignore_eos=True), eos_token_ids=[2], max_new_tokens=9)
    assert ignoring.check([5, 2], tokenizer) is None


@pytest.mark.parametrize(
    ("prompts", "shared"),
    [
        ([[1] * 40 + [2], [1] * 40 + [3, 4], [1] * 40 + [2]], 40),  # 80 token passes saved
        ([[1] * 40 + [2]], 0),  # nothing to share with
        ([[1] * 40 + [2], [1] * 40 + [3]], 0),  # 40 saved: not worth an extra pass
        ([[1] * 40, [1] * 40 + [5], [1] * 40 + [6]], 39),  # each prompt keeps a token of its own
    ],
)
def test_shared_prefix(prompts, shared):
    assert _shared_prefix(prompts) == shared
