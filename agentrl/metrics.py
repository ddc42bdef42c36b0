"""What a training run shows: ``metrics.jsonl``, TensorBoard logs and a PNG of the reward curves.

Every record is one JSON object per line with ``step`` and ``/``-separated names
(``rollout/reward_mean``, ``eval/<dataset>/reward_mean``, ``perf/step_time_s`` ...).
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

PLOTTED = ("rollout/reward_mean", "eval/")


class MetricsLogger:
    """Appends metrics to ``OUTPUT/metrics.jsonl`` and TensorBoard, and redraws
    ``OUTPUT/reward_curves.png`` on every log. Safe to reopen on resume (it appends).

    Every record also carries ``perf/elapsed_s``: seconds since this logger was created (the
    run's start, or its resumption)."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                self._remember(record["step"], record)
        self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self.started = time.monotonic()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        metrics = {**metrics, "perf/elapsed_s": time.monotonic() - self.started}
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()
        self._remember(step, record)
        self.plot()

    def plot(self) -> Path:
        """Draw the reward curves (training and every eval dataset) to ``reward_curves.png``."""
        path = self.output_dir / "reward_curves.png"
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, points in sorted(self.history.items()):
            if name.startswith(PLOTTED) and name.endswith("reward_mean") and points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", markersize=3, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("reward")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def close(self) -> None:
        self.writer.close()

    def _remember(self, step: int, record: dict[str, Any]) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.history[name] = [p for p in self.history[name] if p[0] != step] + [(step, float(value))]


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
