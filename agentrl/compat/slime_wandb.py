"""slime's ``--use-wandb``: every metrics record also goes to Weights & Biases.

The run is named after ``--wandb-group`` with a random suffix (slime's default; none with
``--disable-wandb-random-suffix``), in ``--wandb-project`` under ``--wandb-team``, its files in
``--wandb-dir`` (default: the output directory). ``--wandb-mode offline`` writes the run to disk
only (``wandb sync`` uploads it later) and needs no network or key. wandb is an optional
dependency: ``pip install 'agentrl[wandb]'``.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast


class WandbOptions(Protocol):
    """The flags :func:`open_wandb` reads (``TrainConfig`` has them)."""

    @property
    def use_wandb(self) -> bool: ...

    @property
    def wandb_project(self) -> str | None: ...

    @property
    def wandb_group(self) -> str | None: ...

    @property
    def wandb_team(self) -> str | None: ...

    @property
    def wandb_key(self) -> str | None: ...

    @property
    def wandb_host(self) -> str | None: ...

    @property
    def wandb_mode(self) -> str | None: ...

    @property
    def wandb_dir(self) -> str | None: ...

    @property
    def wandb_run_id(self) -> str | None: ...

    @property
    def disable_wandb_random_suffix(self) -> bool: ...

    @property
    def output_dir(self) -> str: ...


    def to_dict(self) -> dict[str, Any]: ...


class WandbSink:
    """Sends metrics records to one W&B run; a metrics sink (``log`` and ``close``)."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log the record's finite numbers at ``step`` (text, lists and NaN are left out)."""
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


def open_wandb(cfg: WandbOptions) -> WandbSink | None:
    """The W&B run for ``cfg`` when ``--use-wandb`` is on, else ``None``.

    Raises:
        ImportError: wandb is not installed (the config refuses ``--use-wandb`` then already).
    """
    if not cfg.use_wandb:
        return None
    import wandb

    if cfg.wandb_key and cfg.wandb_mode != "offline":
        wandb.login(key=cfg.wandb_key, host=cfg.wandb_host, relogin=True)
    stem = cfg.wandb_group or Path(cfg.output_dir).name
    name = stem if cfg.disable_wandb_random_suffix else f"{stem}_{secrets.token_hex(3)}"
    directory = Path(cfg.wandb_dir or cfg.output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(base_url=cfg.wandb_host) if cfg.wandb_host else None
    run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_team, group=cfg.wandb_group, name=name, id=cfg.wandb_run_id,
                     mode=cast(Any, cfg.wandb_mode), dir=str(directory), config=cfg.to_dict(), resume="allow" if cfg.wandb_run_id else None,
                     settings=settings)
    return WandbSink(run)


def metric_sinks(cfg: WandbOptions) -> list[WandbSink]:
    """The metrics sinks ``cfg`` asks for (``MetricsLogger(out, sinks=metric_sinks(cfg))``): the
    W&B run with ``--use-wandb``, else none."""
    sink = open_wandb(cfg)
    return [] if sink is None else [sink]
