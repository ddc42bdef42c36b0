"""Dealing one rollout's samples to data-parallel trainer ranks, balanced by tokens.

Strategy: whole samples (every sequence of one trajectory together) go to ranks longest first,
each to the rank with the fewest tokens so far (ties to the lowest rank); each rank's samples
keep their original order and are renumbered ``0..n-1``, as
:meth:`~agentrl.trainers.torch_trainer.TorchTrainer.train_rollout` expects of one rank's share.

Invariants (checked by ``tests/trainers/test_dp_split.py`` in every scenario):

* every sample is on exactly one rank, with all its sequences, unchanged but for its index;
* a rank's sample indices are ``0..n-1`` in the original order;
* the token totals of any two ranks differ by at most the largest sample's tokens.

Advantages are computed over whole GRPO groups before the split, and the trainer normalises the
loss by counts all-reduced over ranks, so the split changes no gradient: the update equals one
rank's on the whole batch.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from agentrl.trainers.batching import TrainSequence


@dataclass(frozen=True)
class RankShare:
    """One rank's part of a rollout.

    Attributes:
        sequences: its sequences, ``sample_index`` renumbered ``0..num_samples-1``.
        num_samples: how many samples (trajectories) they come from.
        tokens: their total length in tokens (prompt and response).
    """

    sequences: list[TrainSequence]
    num_samples: int
    tokens: int


def split_for_ranks(sequences: Sequence[TrainSequence], world_size: int) -> list[RankShare]:
    """Deal the samples of ``sequences`` to ``world_size`` ranks; see the module docstring.

    Raises:
        ValueError: ``world_size`` is below 1.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    by_sample: dict[int, list[TrainSequence]] = defaultdict(list)
    for seq in sequences:
        by_sample[seq.sample_index].append(seq)
    tokens = {sample: sum(len(s) for s in seqs) for sample, seqs in by_sample.items()}
    loads = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for sample in sorted(by_sample, key=lambda k: (-tokens[k], k)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += tokens[sample]
        owned[rank].append(sample)
    return [_share([by_sample[k] for k in sorted(samples)], load) for samples, load in zip(owned, loads)]


def _share(samples: list[list[TrainSequence]], tokens: int) -> RankShare:
    renumbered = [dataclasses.replace(seq, sample_index=i) for i, seqs in enumerate(samples) for seq in seqs]
    return RankShare(renumbered, len(samples), tokens)
