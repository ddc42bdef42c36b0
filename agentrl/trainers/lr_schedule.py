"""Learning-rate schedules with Megatron's (and so slime's) flag meanings.

``--lr-warmup-iters`` optimizer steps rise linearly from 0 to ``--lr``; then the rate follows
``--lr-decay-style`` (``constant``, ``linear`` or ``cosine``) from ``--lr`` down to ``--min-lr``
at step ``--lr-decay-iters`` (warmup included) and stays there.
"""

from __future__ import annotations

import math
from typing import Literal

LrDecayStyle = Literal["constant", "linear", "cosine"]
LR_DECAY_STYLES: tuple[str, ...] = ("constant", "linear", "cosine")


def learning_rate(step: int, *, lr: float, min_lr: float, warmup: int, decay_iters: int, style: LrDecayStyle) -> float:
    """The learning rate of optimizer step ``step`` (0-based)."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if style == "constant":
        return lr
    if style not in LR_DECAY_STYLES:
        raise ValueError(f"lr decay style {style!r} is not one of {', '.join(LR_DECAY_STYLES)}")
    span = max(decay_iters - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    fraction = 1.0 - progress if style == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (lr - min_lr) * fraction
