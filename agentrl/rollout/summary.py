"""One-line summaries of a batch of trajectories, for the CLI and the metrics log."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from agentrl.rollout.trajectory import Trajectory


def summarize(trajectories: Sequence[Trajectory], *, elapsed_s: float) -> dict[str, Any]:
    """Mean reward, termination counts and throughput of a batch, as plain JSON values.

    Excluded episodes (env errors, timeouts, aborts) are counted but left out of the reward mean,
    as they are left out of training. A mean with nothing to average (every episode excluded, no
    time elapsed) is ``None``, never NaN, so the summary is strict JSON.
    """
    kept = [t for t in trajectories if not t.excluded]
    sampled = sum(t.metrics.get("sampled_tokens", 0) for t in trajectories)
    return {
        "episodes": len(trajectories),
        "reward_mean": sum(t.reward for t in kept) / len(kept) if kept else None,
        "excluded": len(trajectories) - len(kept),
        "termination": dict(Counter(t.termination.value for t in trajectories)),
        "turns_mean": sum(t.metrics.get("turns", 0) for t in trajectories) / max(len(trajectories), 1),
        "prefix_mismatches": sum(t.metrics.get("prefix_mismatches", 0) for t in trajectories),
        "sampled_tokens": sampled,
        "elapsed_s": round(elapsed_s, 3),
        "tokens_per_s": round(sampled / elapsed_s, 2) if elapsed_s > 0 else None,
    }
