"""A copy of a model's weights in CPU memory, swapped in for a while (the reference policy).

slime computes reference log-probs this way instead of keeping a second model resident: the
snapshot of the initial weights lives on the host (pinned when the model is on a GPU); for a
reference pass the live weights are copied out, the snapshot copied in, and the live weights
restored afterwards, bit for bit. Costs one host copy of the weights and three copies per pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def _host_copy(params: list[nn.Parameter]) -> list[Tensor]:
    return [p.detach().to("cpu", copy=True).pin_memory() if p.is_cuda else p.detach().to("cpu", copy=True) for p in params]


class WeightSnapshot:
    """The parameters of ``model`` as they are now, in host memory."""

    def __init__(self, model: nn.Module) -> None:
        self.tensors = _host_copy(list(model.parameters()))

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Run the body with the snapshot's weights in ``model`` (the same module it was taken
        of), restoring the live weights on exit, also on error."""
        params = list(model.parameters())
        if [p.shape for p in params] != [t.shape for t in self.tensors]:
            raise ValueError("the snapshot was taken of a model with other parameters")
        live = _host_copy(params)
        _copy_into(params, self.tensors)
        try:
            yield
        finally:
            _copy_into(params, live)


@torch.no_grad()
def _copy_into(params: list[nn.Parameter], tensors: list[Tensor]) -> None:
    for p, t in zip(params, tensors):
        p.copy_(t, non_blocking=True)
