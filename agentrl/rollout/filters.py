"""Group filters for dynamic sampling (slime's ``--dynamic-sampling-filter-path``), as in DAPO.

A filter sees one finished group (the ``n_samples_per_prompt`` trajectories of one task) and says
whether it goes to training. Its signature is slime's::

    def my_filter(args, samples: list[Trajectory], **kwargs) -> DynamicFilterOutput | bool

``args`` is what the training loop passes (its config); ``samples`` are
:class:`~agentrl.rollout.trajectory.Trajectory` records (``.reward``, ``.rewards``,
``.termination``, ``.excluded``, ``.info``...), not slime ``Sample`` objects. A bare bool is read
as ``DynamicFilterOutput(keep=bool)``, as slime does for its older filters.

Built in (also reachable under slime's paths, so slime configs run unchanged):
:func:`check_reward_nonzero_std` and :func:`check_reward_nonzero_std_with_fallback`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agentrl.errors import ConfigError
from agentrl.plugins import load_function
from agentrl.rollout.trajectory import Trajectory

GroupFilter = Callable[..., Any]
"""``(args, samples: list[Trajectory], **kwargs) -> DynamicFilterOutput | bool``."""

ZERO_STD = 1e-6
"""Groups whose reward standard deviation is at most this are dropped (slime's threshold)."""


@dataclass
class DynamicFilterOutput:
    """A filter's verdict on one group (slime's fields and meanings).

    Attributes:
        keep: send the group to training.
        reason: why it was dropped; counted as ``dynamic_filter/drop_<reason>``. ``None`` counts
            under the filter's name.
        keep_when_insufficient: keep the rejected group anyway when dropping it would leave too
            few groups launched to reach the batch (no further over-sampling round).
    """

    keep: bool
    reason: str | None = None
    keep_when_insufficient: bool = False


def check_reward_nonzero_std(args: Any, samples: Sequence[Trajectory], **kwargs: Any) -> DynamicFilterOutput:
    """Keep a group whose rewards differ (standard deviation above :data:`ZERO_STD`); a group in
    which every sample got the same reward teaches GRPO nothing. Excluded samples (env errors,
    aborts) are left out, as they are out of the group's baseline; fewer than two left is a drop.
    Drop reasons are slime's: ``zero_std_<reward rounded to 0.1>``."""
    rewards = [t.reward for t in samples if not t.excluded]
    if len(rewards) < 2:
        return DynamicFilterOutput(keep=False, reason="too_few_valid_samples")
    if statistics.stdev(rewards) > ZERO_STD:
        return DynamicFilterOutput(keep=True)
    return DynamicFilterOutput(keep=False, reason=f"zero_std_{round(rewards[0], 1)}")


def check_reward_nonzero_std_with_fallback(args: Any, samples: Sequence[Trajectory], **kwargs: Any) -> DynamicFilterOutput:
    """:func:`check_reward_nonzero_std`, but keep a zero-std group rather than launch another
    over-sampling round."""
    output = check_reward_nonzero_std(args, samples, **kwargs)
    output.keep_when_insufficient = True
    return output


SLIME_FILTERS: dict[str, GroupFilter] = {
    "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std": check_reward_nonzero_std,
    "slime.rollout.filter_hub.dynamic_sampling_filters.check_reward_nonzero_std_with_fallback": check_reward_nonzero_std_with_fallback,
}
"""slime's built-in filter paths, mapped to the same filters over trajectories."""


def load_group_filter(path: str) -> GroupFilter:
    """The filter ``path`` names (``pkg.module:function``, ``pkg.module.function`` or a slime
    built-in path).

    Raises:
        ConfigError: it cannot be imported (the message names ``--dynamic-sampling-filter-path``).
    """
    return SLIME_FILTERS.get(path) or load_function(path, flag="--dynamic-sampling-filter-path")


def apply_filter(group_filter: GroupFilter | None, args: Any, samples: list[Trajectory]) -> DynamicFilterOutput:
    """Call ``group_filter`` on one group and read its answer as a :class:`DynamicFilterOutput`.

    Anything with a ``keep`` attribute (slime's own ``DynamicFilterOutput`` too) is read field by
    field; a bare bool is ``keep``. ``None`` keeps every group.

    Raises:
        ConfigError: the filter returned something else.
    """
    if group_filter is None:
        return DynamicFilterOutput(keep=True)
    output = group_filter(args, samples)
    if isinstance(output, bool) or _is_bool_like(output):
        return DynamicFilterOutput(keep=bool(output))
    if hasattr(output, "keep"):
        return DynamicFilterOutput(bool(output.keep), getattr(output, "reason", None), bool(getattr(output, "keep_when_insufficient", False)))
    name = getattr(group_filter, "__qualname__", repr(group_filter))
    raise ConfigError(f"--dynamic-sampling-filter-path {name} returned {output!r:.100}; expected DynamicFilterOutput or bool")


def _is_bool_like(value: Any) -> bool:
    """numpy and torch booleans (what ``tensor.std() > x`` gives) count as bools."""
    return type(value).__name__ in ("bool_", "Tensor") and getattr(value, "ndim", 0) == 0
