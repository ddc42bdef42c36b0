"""From trajectories to packed micro-batches: the data path of a training step.

Strategy: every trajectory segment becomes one :class:`TrainSequence` (its tokens, which
positions are trained, their advantages and rollout log-probs). Sequences are packed *without
padding* into micro-batches: concatenated along one row ``[1, T]`` with position ids restarting
at 0 for each sequence; each attends only to itself, causally. The samples of one GRPO group
share their prompt: packed next to each other, later ones keep only their response tokens and
attend to the first one's copy of the prompt.

Invariants (checked by ``tests/trainers/test_torch_trainer.py``):
  * every sequence lands in exactly one micro-batch, in order, none split;
  * a micro-batch holds at most ``max_tokens`` tokens, unless it is a single sequence that is
    longer on its own (budgets count a shared prompt once; a group split across two
    micro-batches repeats its prompt in the second, which may overrun by that prompt);
  * the flat per-token arrays of a micro-batch select exactly the trained positions of its
    sequences, with the target of position ``i`` being token ``i + 1`` of the same sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from agentrl.rollout.trajectory import Trajectory
from agentrl.trainers.algorithms import AdvantageEstimator, sample_advantages, whiten
from agentrl.trainers.packed_attention import AttentionLayout, attention_layout, cumulative_lengths


@dataclass(frozen=True)
class TrainSequence:
    """One token sequence to train on.

    Attributes:
        token_ids: prompt then response, ``[L]``.
        prompt_len: number of prompt tokens ``P``; response token ``j`` is ``token_ids[P + j]``.
        loss_mask: ``[L - P]``, 1 where the response token was sampled by the policy.
        rollout_logprobs: ``[L - P]``, the engine's log-prob of each response token (0 if masked).
        advantages: ``[L - P]``, the advantage of each response token.
        sample_index: which sample (trajectory) of the step this sequence belongs to.
    """

    token_ids: list[int]
    prompt_len: int
    loss_mask: list[int]
    rollout_logprobs: list[float]
    advantages: list[float]
    sample_index: int

    def __post_init__(self) -> None:
        n = len(self.token_ids) - self.prompt_len
        lengths = (len(self.loss_mask), len(self.rollout_logprobs), len(self.advantages))
        if any(length != n for length in lengths):
            raise ValueError(f"response has {n} tokens but loss_mask/rollout_logprobs/advantages have {lengths}")
        if self.prompt_len < 1:
            raise ValueError("a sequence needs at least one prompt token to predict its first response token")

    def __len__(self) -> int:
        return len(self.token_ids)


def build_train_sequences(
    trajectories: Sequence[Trajectory], group_size: int, estimator: AdvantageEstimator, *, std_normalization: bool = True
) -> tuple[list[TrainSequence], int]:
    """The training data of one rollout, whose consecutive runs of ``group_size`` trajectories
    are the groups: excluded episodes (env errors, aborts) dropped, so they are out of the loss
    and of their group's baseline; advantages per the estimator (whitened over all trained
    tokens for the REINFORCE++ estimators). Returns ``(sequences, samples)``."""
    kept_at = [i for i, t in enumerate(trajectories) if not t.excluded]
    if not kept_at:
        return [], 0
    kept = [trajectories[i] for i in kept_at]
    rewards = torch.tensor([t.reward for t in kept])
    groups = torch.tensor([i // group_size for i in kept_at])
    advantages = sample_advantages(rewards, groups, estimator, std_normalization=std_normalization)
    sequences = sequences_from_trajectories(kept, advantages.tolist())
    if estimator in ("reinforce_plus_plus", "reinforce_plus_plus_baseline") and sequences:
        flat = torch.tensor([a for s in sequences for a in s.advantages])
        mask = torch.tensor([m for s in sequences for m in s.loss_mask])
        white = whiten(flat, mask).tolist()
        out, start = [], 0
        for s in sequences:
            n = len(s.advantages)
            out.append(dataclasses.replace(s, advantages=white[start : start + n]))
            start += n
        sequences = out
    return sequences, len(kept)


def sequences_from_trajectories(trajectories: Sequence[Trajectory], advantages: Sequence[float]) -> list[TrainSequence]:
    """One :class:`TrainSequence` per segment, with the trajectory's scalar advantage on every
    response token; ``sample_index`` is the trajectory's position in ``trajectories``."""
    if len(trajectories) != len(advantages):
        raise ValueError(f"{len(trajectories)} trajectories but {len(advantages)} advantages")
    out = []
    for i, (trajectory, advantage) in enumerate(zip(trajectories, advantages)):
        for segment in trajectory.segments:
            if not segment.response_ids:
                continue
            out.append(TrainSequence(
                token_ids=segment.token_ids,
                prompt_len=len(segment.prompt_ids),
                loss_mask=list(segment.loss_mask),
                rollout_logprobs=list(segment.rollout_logprobs),
                advantages=[float(advantage)] * len(segment.response_ids),
                sample_index=i,
            ))
    return out


def pack(lengths: Sequence[int], *, max_tokens: int | None = None, max_sequences: int | None = None) -> list[list[int]]:
    """Group consecutive sequences (given by their lengths) into micro-batches of at most
    ``max_tokens`` tokens (dynamic batch size) or ``max_sequences`` sequences (static micro-batch
    size), keeping order; returns the indices of each micro-batch."""
    if (max_tokens is None) == (max_sequences is None):
        raise ValueError("give exactly one of max_tokens and max_sequences")
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i, length in enumerate(lengths):
        full = len(current) == max_sequences if max_sequences else tokens + length > max_tokens  # type: ignore[operator]
        if current and full:
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += length
    if current:
        batches.append(current)
    return batches


@dataclass
class MicroBatch:
    """Tensors of one packed micro-batch.

    Attributes:
        input_ids: ``[1, T]`` the concatenated sequences.
        position_ids: ``[1, T]`` positions restarting at 0 for each sequence.
        pred_index: ``[N]`` positions in ``T`` whose next-token prediction is a response token.
        targets: ``[N]`` the response token predicted at each of those positions.
        loss_mask, rollout_logprobs, advantages: ``[N]`` per response token.
        sample_index: ``[N]`` the step-level sample of each response token.
        local_index: ``[N]`` the sequence within this micro-batch of each response token.
        cu_seq_lens: ``[S + 1]`` int32 offsets of the ``S`` runs of tokens in the row (one per sequence).
        max_length: the longest run's length.
        layout: what each run attends to (its own tokens, after a shared prompt if it has one).
    """

    input_ids: Tensor
    position_ids: Tensor
    pred_index: Tensor
    targets: Tensor
    loss_mask: Tensor
    rollout_logprobs: Tensor
    advantages: Tensor
    sample_index: Tensor
    local_index: Tensor
    cu_seq_lens: Tensor
    max_length: int
    layout: AttentionLayout

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[1]

    def to(self, device: torch.device | str) -> MicroBatch:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in vars(self).items() if not isinstance(v, int)})


def collate(sequences: Sequence[TrainSequence], *, share_prompts: bool = True) -> MicroBatch:
    """Concatenate ``sequences`` into one packed :class:`MicroBatch` (no padding).

    With ``share_prompts``, a sequence whose prompt equals that of an earlier sequence in the
    micro-batch (the samples of one GRPO group) contributes only its response tokens, at the
    positions they would have after the prompt, attending to the earlier copy of the prompt: the
    same logits and gradients for fewer tokens.
    """
    ids: list[int] = []
    positions: list[int] = []
    pred: list[int] = []
    targets: list[int] = []
    mask: list[int] = []
    rollout: list[float] = []
    adv: list[float] = []
    sample: list[int] = []
    local: list[int] = []
    runs: list[tuple[int, int]] = []
    prefixes: list[tuple[int, int]] = []
    prompt_at: dict[tuple[int, ...], int] = {}  # prompt -> where its first copy starts in the row
    offset = 0
    for k, seq in enumerate(sequences):
        prompt = tuple(seq.token_ids[: seq.prompt_len])
        shared = prompt_at.get(prompt) if share_prompts else None
        first = seq.prompt_len if shared is not None else 0  # tokens of this sequence already in the row
        if shared is None:
            prompt_at[prompt] = offset
        tokens = seq.token_ids[first:]
        ids.extend(tokens)
        positions.extend(range(first, len(seq)))
        runs.append((offset, offset + len(tokens)))
        prefixes.append((shared, seq.prompt_len) if shared is not None else (offset, 0))
        # position predicting each response token: the prompt's last token, then the response's own
        last_prompt_token = (shared if shared is not None else offset) + seq.prompt_len - 1
        own_start = offset - first  # row position the sequence's token 0 would have
        pred.append(last_prompt_token)
        pred.extend(range(own_start + seq.prompt_len, own_start + len(seq) - 1))
        targets.extend(seq.token_ids[seq.prompt_len:])
        mask.extend(seq.loss_mask)
        rollout.extend(seq.rollout_logprobs)
        adv.extend(seq.advantages)
        n_resp = len(seq) - seq.prompt_len
        sample.extend([seq.sample_index] * n_resp)
        local.extend([k] * n_resp)
        offset += len(tokens)
    def long(xs: list[int]) -> Tensor:
        return torch.tensor(xs, dtype=torch.long)

    return MicroBatch(
        input_ids=long(ids).unsqueeze(0),
        position_ids=long(positions).unsqueeze(0),
        pred_index=long(pred),
        targets=long(targets),
        loss_mask=torch.tensor(mask, dtype=torch.float32),
        rollout_logprobs=torch.tensor(rollout, dtype=torch.float32),
        advantages=torch.tensor(adv, dtype=torch.float32),
        sample_index=long(sample),
        local_index=long(local),
        cu_seq_lens=cumulative_lengths([end - start for start, end in runs], "cpu"),
        max_length=max((end - start for start, end in runs), default=0),
        layout=attention_layout(runs, prefixes),
    )


def packed_lengths(sequences: Sequence[TrainSequence], *, share_prompts: bool = True) -> list[int]:
    """The tokens each sequence adds to a row when packed in order: its response only when the
    previous sequence had the same prompt (micro-batch budgets are planned with these)."""
    out = []
    for i, seq in enumerate(sequences):
        prev = sequences[i - 1] if i else None
        same = share_prompts and prev is not None and prev.token_ids[: prev.prompt_len] == seq.token_ids[: seq.prompt_len]
        out.append(len(seq) - seq.prompt_len if same else len(seq))
    return out


def optimizer_step_slices(sequences: Sequence[TrainSequence], num_samples: int, steps: int) -> list[list[int]]:
    """The indices into ``sequences`` that each of ``steps`` optimizer steps trains: step ``k``
    takes the samples ``k * n // steps <= sample_index < (k + 1) * n // steps`` (``n`` =
    ``num_samples``), so the steps differ by at most one sample and every sample is trained."""
    bounds = [k * num_samples // steps for k in range(steps + 1)]
    return [[i for i, s in enumerate(sequences) if bounds[k] <= s.sample_index < bounds[k + 1]] for k in range(steps)]


def micro_batches(sequences: Sequence[TrainSequence], *, dynamic: bool, max_tokens: int | None, micro_batch_size: int) -> list[list[int]]:
    """The indices of ``sequences`` in each micro-batch: packed to at most ``max_tokens`` tokens
    when ``dynamic`` (``--use-dynamic-batch-size``), else ``micro_batch_size`` sequences each."""
    lengths = packed_lengths(sequences)
    return pack(lengths, max_tokens=max_tokens) if dynamic else pack(lengths, max_sequences=micro_batch_size)
