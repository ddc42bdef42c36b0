"""The trajectory record: what one episode leaves for training, token-exact.

A trajectory is one or more *segments*. A segment is one token sequence the trainer sees:
``prompt_ids`` (never trained on) followed by ``response_ids``, in which the tokens the policy
sampled carry ``loss_mask`` 1 and their rollout log-probs, and every other token (the bridge
tokens of observations, turn separators) carries mask 0. With an append-only chat template
an episode is a single segment; a template that rewrites earlier turns (for example one that
strips earlier ``<think>`` blocks) starts a new segment at the turn where the rewrite happens.

Records are written as JSON lines and carry :data:`SCHEMA_VERSION`.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from agentrl.envs.core import Message
from agentrl.errors import TrainingError

SCHEMA_VERSION = 1
"""Bumped whenever a field of :class:`Trajectory` or :class:`Segment` changes meaning."""


class Termination(enum.StrEnum):
    """Why an episode ended."""

    DONE = "done"  # the env terminated (task solved or failed)
    TRUNCATED = "truncated"  # the env truncated for its own reason
    MAX_TURNS = "max_turns"  # the turn limit was reached
    CONTEXT_LIMIT = "context_limit"  # prompt + turns would exceed the context length
    LENGTH = "length"  # a turn hit its token budget (max new tokens)
    TIMEOUT = "timeout"  # a step or the whole episode took too long: left out of the loss
    ENV_ERROR = "env_error"  # the env raised: left out of the loss and of its group's baseline
    ABORT = "abort"  # the engine aborted or failed: left out of the loss too

    @property
    def excluded(self) -> bool:
        """Whether samples ending this way are left out of the loss and the group baseline: an
        env that raised or hung, or an engine that failed, says nothing about the policy."""
        return self in (Termination.TIMEOUT, Termination.ENV_ERROR, Termination.ABORT)


@dataclass
class Segment:
    """One trainable token sequence.

    Attributes:
        prompt_ids: the rendered prompt, ``[P]``; not trained on.
        response_ids: everything after the prompt, ``[R]``: sampled tokens and bridge tokens.
        loss_mask: ``[R]``; 1 for tokens the policy sampled, 0 for everything else.
        rollout_logprobs: ``[R]``; the engine's log-prob of each sampled token, 0.0 where masked.
    """

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    rollout_logprobs: list[float] = field(default_factory=list)

    def append(self, token_ids: list[int], *, sampled: bool, logprobs: list[float] | None = None) -> None:
        """Append tokens: sampled ones with their log-probs (mask 1), or bridge tokens (mask 0)."""
        if sampled:
            if logprobs is None or len(logprobs) != len(token_ids):
                got = None if logprobs is None else len(logprobs)
                raise ValueError(f"sampled tokens need one logprob each: {len(token_ids)} tokens, {got} logprobs")
            self.rollout_logprobs.extend(logprobs)
        else:
            self.rollout_logprobs.extend([0.0] * len(token_ids))
        self.response_ids.extend(token_ids)
        self.loss_mask.extend([1 if sampled else 0] * len(token_ids))

    def mask(self, end: int | None = None) -> int:
        """Leave response tokens ``[0:end)`` (all when ``None``) out of the loss: mask 0, log-prob
        0.0. Used for tokens sampled under older weights (partial rollout). Returns how many
        sampled tokens it masked."""
        end = len(self.response_ids) if end is None else end
        if not 0 <= end <= len(self.response_ids):
            raise ValueError(f"mask end {end} is outside the response of {len(self.response_ids)} tokens")
        masked = sum(self.loss_mask[:end])
        self.loss_mask[:end] = [0] * end
        self.rollout_logprobs[:end] = [0.0] * end
        return masked

    @property
    def token_ids(self) -> list[int]:
        """The whole sequence, prompt then response."""
        return self.prompt_ids + self.response_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass
class Trajectory:
    """One episode, ready for training and readable as JSON.

    Attributes:
        task_index: the task's row in its dataset; samples of one task form a group.
        sample_index: which of the task's ``n_samples_per_prompt`` samples this is.
        segments: the token sequences (see the module docstring).
        messages: the whole conversation as the env and the policy exchanged it.
        rewards: the reward of each env step; the return is their sum.
        termination: why the episode ended.
        weight_versions: the weight version that produced each turn; for a turn that partial
            rollout split across steps, the version of its first part (the oldest).
        label: the task's label, for readers of rollout dumps.
        metrics: per-episode numbers (turns, tokens, prefix mismatches, times).
        info: the env's info from its last step.
        error: the error that ended the episode (``env_error``, ``abort``, ``timeout``), else None.
        rollout_steps: the training steps (rollout ids) the episode was played in, in order; more
            than one when partial rollout resumed it (the first is slime's ``start_rollout_id``).
            Empty when it was played outside a training step.
    """

    task_index: int
    sample_index: int
    segments: list[Segment]
    messages: list[Message]
    rewards: list[float]
    termination: Termination
    weight_versions: list[int] = field(default_factory=list)
    label: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    rollout_steps: list[int] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def reward(self) -> float:
        """The episode's return: the sum of its step rewards."""
        return float(sum(self.rewards))

    @property
    def excluded(self) -> bool:
        """True when the episode is left out of the loss and of its group's baseline."""
        return self.termination.excluded

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["termination"] = self.termination.value
        record["reward"] = self.reward
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Trajectory:
        """Rebuild a trajectory from :meth:`to_dict` output; rejects other schema versions."""
        version = record.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"trajectory schema_version {version!r} is not {SCHEMA_VERSION}")
        fields = {k: v for k, v in record.items() if k != "reward"}
        fields["segments"] = [Segment(**s) for s in record["segments"]]
        fields["termination"] = Termination(record["termination"])
        return cls(**fields)


def check_trainable(trajectories: Sequence[Trajectory], step: int) -> None:
    """Refuse a rollout step in which no episode can be trained on (every one failed).

    Raises:
        TrainingError: with the first failed episode's termination, error and traceback.
    """
    if any(not t.excluded for t in trajectories):
        return
    if not trajectories:
        raise TrainingError(f"rollout step {step} played no episode: nothing to train on")
    raise TrainingError(f"rollout step {step}: none of its {len(trajectories)} episodes can be trained on ({_terminations(trajectories)}); "
                        f"nothing was saved.\n{_first_failure(trajectories[0])}")


def describe_excluded(trajectories: Sequence[Trajectory]) -> str:
    """How many of ``trajectories`` were excluded, how they ended, and the first one's error."""
    failed = [t for t in trajectories if t.excluded]
    if not failed:
        return "no episode was excluded"
    return f"{len(failed)} of {len(trajectories)} episodes excluded ({_terminations(failed)}).\n{_first_failure(failed[0])}"


def _terminations(trajectories: Sequence[Trajectory]) -> str:
    return ", ".join(f"{n} {k}" for k, n in Counter(t.termination.value for t in trajectories).items())


def _first_failure(t: Trajectory) -> str:
    return f"The first (task {t.task_index}, sample {t.sample_index}) ended as {t.termination.value}: {t.error}"
