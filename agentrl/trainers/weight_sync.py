"""Weight sync: the one interface from the trainer to the inference engines.

Transports implement :class:`WeightSync`; :class:`EngineWeightSync` hands tensors to in-process
engines (the embedded engine). Every push carries the new weight version, which the engines
stamp on every trajectory they produce from then on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch

from agentrl.policies.base import Policy


class WeightSync(ABC):
    """Moves the trainer's weights (Hugging Face names) to every engine."""

    @abstractmethod
    async def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, weight_version: int) -> None:
        """Load ``named_tensors`` into every engine and set their weight version. Returns when
        every engine serves the new weights; no request runs on a mix of versions."""


class EngineWeightSync(WeightSync):
    """Weight sync to engines in this process, through :meth:`Policy.update_weights`."""

    def __init__(self, engines: Sequence[Policy]) -> None:
        self.engines = list(engines)

    async def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], *, weight_version: int) -> None:
        tensors = list(named_tensors)
        for engine in self.engines:
            await engine.update_weights(tensors, weight_version=weight_version)
