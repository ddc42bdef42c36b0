"""Dealing a rollout's samples to data-parallel ranks: every invariant in every scenario."""

from __future__ import annotations

import random

import pytest

from agentrl.trainers.batching import TrainSequence
from agentrl.trainers.dp_split import RankShare, split_for_ranks


def sequences(lengths: list[list[int]]) -> list[TrainSequence]:
    """Sample ``k`` has one sequence per entry of ``lengths[k]`` (its total length), prompt 2 tokens."""
    out = []
    for k, seqs in enumerate(lengths):
        for n in seqs:
            out.append(TrainSequence(list(range(n)), 2, [1] * (n - 2), [-1.0] * (n - 2), [float(k)] * (n - 2), k))
    return out


def assert_invariants(given: list[TrainSequence], shares: list[RankShare], world: int) -> None:
    assert len(shares) == world
    seen = []
    for share in shares:
        indices = [s.sample_index for s in share.sequences]
        assert sorted(set(indices)) == list(range(share.num_samples))  # renumbered 0..n-1
        assert indices == sorted(indices)  # original order kept, a sample's sequences together
        assert share.tokens == sum(len(s) for s in share.sequences)
        seen += [(s.advantages[0], tuple(s.token_ids)) for s in share.sequences]  # advantages[0] is the original index
    assert sorted(seen) == sorted((s.advantages[0], tuple(s.token_ids)) for s in given)  # each sample once, whole
    for share in shares:  # original order within a rank
        originals = [s.advantages[0] for s in share.sequences]
        assert originals == sorted(originals)
    per_sample = {}
    for s in given:
        per_sample[s.sample_index] = per_sample.get(s.sample_index, 0) + len(s)
    biggest = max(per_sample.values(), default=0)
    loads = [share.tokens for share in shares]
    assert max(loads) - min(loads) <= biggest


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("seed", range(5))
def test_random_rollouts_keep_every_invariant(world, seed):
    rng = random.Random(seed)
    lengths = [[rng.randint(3, 400) for _ in range(rng.choice([1, 1, 2, 3]))] for _ in range(rng.randint(0, 70))]
    given = sequences(lengths)
    assert_invariants(given, split_for_ranks(given, world), world)


def test_fewer_samples_than_ranks_leaves_some_ranks_empty():
    given = sequences([[10], [20]])
    shares = split_for_ranks(given, 4)
    assert_invariants(given, shares, 4)
    assert sorted(s.num_samples for s in shares) == [0, 0, 1, 1]


def test_one_long_sample_against_many_short_ones_is_balanced_by_tokens_not_counts():
    given = sequences([[100]] + [[10]] * 10)
    shares = split_for_ranks(given, 2)
    assert_invariants(given, shares, 2)
    assert sorted((s.num_samples, s.tokens) for s in shares) == [(1, 100), (10, 100)]


def test_world_size_must_be_positive():
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        split_for_ranks([], 0)
