"""Declaring the config's fields: :func:`opt` (help text, range, choices), :class:`Range`, and the
name of a field's flag."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from agentrl.trainers.megatron.config import MegatronConfig


@dataclass(frozen=True)
class Range:
    """The numbers a field allows: ``Range(gt=0, le=1)`` is (0, 1]; ``also`` lists values allowed
    outside it (``-1`` for "all")."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    also: tuple[float, ...] = ()

    def __contains__(self, x: float) -> bool:
        inside = (self.ge is None or x >= self.ge) and (self.gt is None or x > self.gt)
        return x in self.also or (inside and (self.le is None or x <= self.le) and (self.lt is None or x < self.lt))

    def __str__(self) -> str:
        low, high = self.ge if self.ge is not None else self.gt, self.le if self.le is not None else self.lt
        if low is not None and high is not None:
            text = f"in {'[' if self.ge is not None else '('}{low:g}, {high:g}{']' if self.le is not None else ')'}"
        elif low is not None:
            text = f"{'>=' if self.ge is not None else '>'} {low:g}"
        else:
            text = f"{'<=' if self.le is not None else '<'} {high:g}"
        return text + "".join(f" (or {v:g})" for v in self.also)


HINT_CUTOFF = 0.75
"""How similar an unknown flag must be to a known one to be offered as "did you mean"."""

AT_LEAST_1 = Range(ge=1)
NON_NEGATIVE = Range(ge=0)
POSITIVE = Range(gt=0)
BETA = Range(ge=0, lt=1)


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its help text (shown by ``--help``). Keywords: ``range`` (a
    :class:`Range`, for a list each item), ``choices``, ``nargs``, ``cli=False`` (YAML only),
    ``auto=True`` (a bool field that also takes ``auto``, which ``__post_init__`` resolves)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


MEGATRON_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MegatronConfig))
"""The fields of :class:`TrainConfig` that are the Megatron trainer's (Megatron-LM's flag names)."""


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``rollout_batch_size`` -> ``--rollout-batch-size``."""
    return "--" + name.replace("_", "-")
