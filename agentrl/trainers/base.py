"""The trainer contract: what the training loop calls, whichever backend trains.

:class:`~agentrl.trainers.torch_trainer.TorchTrainer` (PyTorch) and
:class:`~agentrl.trainers.megatron.trainer.MegatronTrainer` (Megatron-Core) both satisfy
:class:`Trainer` structurally (checked by mypy below), so the loop takes either. Both are built
as ``Backend(model_dir, TrainerConfig, LossConfig, device=...)``; Megatron adds its parallel
settings (:class:`~agentrl.trainers.megatron.config.MegatronConfig`).
:func:`agentrl.trainers.build.build_trainer` builds the one ``--train-backend`` names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from torch import Tensor

from agentrl.errors import TrainingError
from agentrl.trainers.batching import TrainSequence


def non_finite_gradients(step: int, grad_norm: float) -> TrainingError:
    """The error of optimizer step ``step`` (counted from 0) whose gradients are not finite: the
    step is not taken, so the weights (and a checkpoint) never hold NaN."""
    return TrainingError(f"optimizer step {step + 1}: the gradients are not finite (grad norm {grad_norm}), so the weights were "
                         "not updated and the run stops; a NaN or inf came from the loss (e.g. an overflowing importance ratio with "
                         "--num-steps-per-rollout > 1) or from the model; lowering --lr often helps")


TrainBackend = Literal["torch", "megatron"]
TRAIN_BACKENDS: tuple[str, ...] = ("torch", "megatron")
"""``--train-backend``'s choices: :class:`TorchTrainer` and :class:`MegatronTrainer`
(:func:`agentrl.trainers.build.build_trainer` builds either)."""


class Trainer(Protocol):
    """A policy being trained with the GRPO-family loss of :mod:`agentrl.trainers.algorithms`."""

    def train_rollout(self, sequences: Sequence[TrainSequence], num_samples: int) -> dict[str, float]:
        """Train on one rollout: ``num_steps_per_rollout`` optimizer steps over its samples.

        Args:
            sequences: this (data-parallel) rank's sequences; their ``sample_index`` runs over
                ``range(num_samples)``, and step ``k`` trains the ``k``-th equal slice of it.
            num_samples: this rank's number of samples (trajectories) in the rollout.

        Returns:
            The steps' metrics averaged over the steps (``train/*``, ``perf/*``), plus
            ``train/optimizer_steps``.
        """
        ...

    def logprobs(self, sequences: Sequence[TrainSequence]) -> list[Tensor]:
        """Per sequence, the fp32 log-probs ``[L - P]`` of its response tokens under the current
        weights (at the configured temperature)."""
        ...

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The policy's weights under Hugging Face names, one tensor at a time (for weight sync
        and export). Tensors may share memory with the live weights: copy what must outlive the
        next step. Distributed backends run collectives: every rank must exhaust the iterator."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (weights, optimizer, schedule position) as plain data
        (tensors, numbers, strings, containers), for :func:`agentrl.checkpoint.save_checkpoint`."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; training then continues exactly."""
        ...

    def save_hf(self, path: str | Path) -> None:
        """Write the policy as a Hugging Face model directory (safetensors and config)."""
        ...

    def close(self) -> None:
        """Release what the trainer holds besides memory (Megatron's process groups); call it
        once, when the trainer is no longer used."""
        ...


if TYPE_CHECKING:  # mypy checks that both backends satisfy the contract
    from agentrl.trainers.megatron.trainer import MegatronTrainer
    from agentrl.trainers.torch_trainer import TorchTrainer

    def _backends(torch_trainer: TorchTrainer, megatron_trainer: MegatronTrainer) -> tuple[Trainer, Trainer]:
        return torch_trainer, megatron_trainer
