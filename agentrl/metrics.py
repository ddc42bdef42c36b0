"""What a training run shows: ``metrics.jsonl``, TensorBoard logs and a PNG of the reward curves.

Every record is one JSON object per line with ``step`` and ``/``-separated names
(``rollout/reward_mean``, ``eval/<dataset>/reward_mean``, ``perf/step_time_s`` ...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from agentrl.errors import DataError

log = logging.getLogger(__name__)

PLOTTED = ("rollout/reward_mean", "eval/")


class MetricsSink(Protocol):
    """Another destination of metrics records (``agentrl.compat.slime_wandb.WandbSink``)."""

    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


Curves = dict[str, list[tuple[int, float]]]
"""Points ``(step, value)`` by metric name."""


class MetricsLogger:
    """Appends metrics to ``OUTPUT/metrics.jsonl`` and TensorBoard, and draws
    ``OUTPUT/reward_curves.png``. Safe to reopen on resume (it appends; see :func:`read_records`).

    :meth:`log` is cheap (an append and TensorBoard scalars) and never draws; :meth:`plot` draws
    and blocks for a while (longer as the history grows). From an event loop call
    ``await logger.alog(step, metrics)``, which logs and then draws in a worker thread.

    Every record also carries ``perf/elapsed_s``: seconds since this logger was created (the
    run's start, or its resumption). Each of ``sinks`` (e.g. a W&B run: ``--use-wandb``) gets
    every record too, and is closed with the logger."""

    def __init__(self, output_dir: str | Path, sinks: Sequence[MetricsSink] = ()) -> None:
        self.sinks = list(sinks)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.output_dir / "metrics.jsonl"
        self.history: Curves = defaultdict(list)
        for record in read_records(self.path):
            self._remember(record["step"], record)
        self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        self.started = time.monotonic()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one record and send its numbers to TensorBoard; never draws.

        The record is strict JSON: tensors and numpy values become numbers or lists, and
        non-finite floats, at any depth, become ``null``.
        """
        metrics = {**metrics, "perf/elapsed_s": time.monotonic() - self.started}
        record = {"step": step, **{k: _plain(v) for k, v in sorted(metrics.items())}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, step)
        self.writer.flush()
        self._remember(step, record)
        for sink in self.sinks:
            sink.log(step, record)

    async def alog(self, step: int, metrics: dict[str, Any]) -> Path:
        """:meth:`log`, then draw the reward curves in a worker thread, so the event loop runs on
        meanwhile. Await one call before making the next. Returns the PNG's path."""
        self.log(step, metrics)
        return await asyncio.to_thread(_draw, self.output_dir / "reward_curves.png", self._curves())

    def plot(self) -> Path:
        """Draw the reward curves (training and every eval dataset) to ``reward_curves.png``.
        Blocking: from an event loop, use :meth:`alog`."""
        return _draw(self.output_dir / "reward_curves.png", self._curves())

    def close(self) -> None:
        self.writer.close()
        for sink in self.sinks:
            sink.close()

    def _curves(self) -> Curves:
        """A copy of the plotted series, safe to draw from another thread while logging goes on."""
        return {name: list(points) for name, points in sorted(self.history.items())
                if name.startswith(PLOTTED) and name.endswith("reward_mean") and points}

    def _remember(self, step: int, record: dict[str, Any]) -> None:
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.history[name] = [p for p in self.history[name] if p[0] != step] + [(step, float(value))]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (none if it does not exist).

    A last line cut short by a kill mid-append is dropped with a warning, and the file is
    rewritten without it (and with a newline after a complete last line) so appends stay valid.

    Raises:
        DataError: an earlier line is not a JSON object with an integer ``step``; names file:line.
    """
    if not path.exists():
        return []
    *lines, tail = path.read_text().split("\n")  # tail is "" when the file ends with a newline
    records = [_parse(path, number, line) for number, line in enumerate(lines, 1)]
    if tail:
        try:
            records.append(_parse(path, len(lines) + 1, tail))
            lines.append(tail)
        except DataError as e:
            log.warning("%s; dropping this truncated last line (a run killed while appending to it)", e)
        _replace_text(path, "".join(f"{line}\n" for line in lines))
    return records


def _parse(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or type(record.get("step")) is not int:
        raise DataError(f"{path}:{number}: not a JSON object with an integer \"step\" ({line[:80]!r}); fix or delete that line to resume")
    return record


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _draw(path: Path, curves: Curves) -> Path:
    """The reward curves as a PNG at ``path`` (pyplot-free, so safe off the main thread)."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for name, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _plain(value: Any) -> Any:
    """``value`` as strict-JSON data: tensors and numpy values as numbers or lists, non-finite
    floats as ``None``, through dicts, lists and tuples at any depth."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
