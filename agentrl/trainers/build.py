"""The one place a trainer is built from its backend's name (``--train-backend``).

Launchers call :func:`build_trainer` with the parts of the config each backend reads, so neither
the local launcher nor a Ray trainer rank names a backend class. The Megatron backend is
imported only when asked for: without ``agentrl[megatron]`` installed, ``torch`` still works.
"""

from __future__ import annotations

from pathlib import Path

from agentrl.errors import ConfigError
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.base import TRAIN_BACKENDS, Trainer
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig


def build_trainer(backend: str, model_dir: str | Path, config: TrainerConfig, loss: LossConfig, *, device: str,
                  megatron: MegatronConfig | None = None, seed: int = 0) -> Trainer:
    """The ``backend`` trainer of the model in ``model_dir``; the caller :meth:`~Trainer.close`\\ s it.

    Args:
        backend: ``torch`` (:class:`TorchTrainer`) or ``megatron``
            (:class:`~agentrl.trainers.megatron.trainer.MegatronTrainer`).
        model_dir: a Hugging Face model directory (or, for ``megatron``, a Megatron checkpoint).
        config, loss: the optimizer/batching and loss settings both backends share.
        device: ``cpu`` or ``cuda[:N]``: this rank's device.
        megatron: Megatron's parallelism settings (``None``: all sizes 1); only for ``megatron``.
        seed: the seed of Megatron's model-parallel RNG tracker (``megatron`` only).

    Raises:
        ConfigError: an unknown backend, Megatron settings for ``torch``, or ``megatron``
            without Megatron-Core installed.
    """
    if backend == "torch":
        if megatron is not None:
            raise ConfigError("Megatron settings were given to the torch trainer: pass --train-backend megatron")
        return TorchTrainer(model_dir, config, loss, device=device)
    if backend == "megatron":
        try:
            from agentrl.trainers.megatron.trainer import MegatronTrainer
        except ImportError as e:
            raise ConfigError(f"--train-backend megatron needs Megatron-Core ({e}): pip install 'agentrl[megatron]'") from e
        return MegatronTrainer(model_dir, config, loss, device=device, parallel=megatron, seed=seed)
    raise ConfigError(f"--train-backend must be one of {', '.join(TRAIN_BACKENDS)}, got {backend!r}")
