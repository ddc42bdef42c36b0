"""Rollout dumps a person can read: each trajectory's text with masked tokens marked.

Tokens the policy sampled (loss mask 1) are shown as they are; every run of tokens it did not
sample (prompt, observations, turn separators) is wrapped in ``⟦...⟧`` so what is trained on is
visible at a glance. The machine-readable records go to a ``.jsonl`` next to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from agentrl.rollout.trajectory import Segment, Trajectory

MASK_OPEN, MASK_CLOSE = "⟦", "⟧"


def render_segment(tokenizer: Any, segment: Segment) -> str:
    """The segment's text with every loss-masked run of tokens wrapped in ``⟦...⟧``."""
    parts = [MASK_OPEN + tokenizer.decode(segment.prompt_ids) + MASK_CLOSE]
    pairs = list(zip(segment.response_ids, segment.loss_mask))
    for trained, run in groupby(pairs, key=lambda p: p[1] == 1):
        text = tokenizer.decode([t for t, _ in run])
        parts.append(text if trained else MASK_OPEN + text + MASK_CLOSE)
    return "".join(parts)


def write_dump(path: str | Path, trajectories: Sequence[Trajectory], tokenizer: Any) -> None:
    """Write ``path`` (readable text) and ``path`` with suffix ``.jsonl`` (records)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".jsonl"), "w") as f:
        f.writelines(json.dumps(t.to_dict()) + "\n" for t in trajectories)
    blocks = []
    for t in trajectories:
        header = (f"=== task {t.task_index} sample {t.sample_index} | reward {t.reward:g} | {t.termination.value}"
                  f" | label {t.label!r} | weights v{t.weight_versions[0] if t.weight_versions else '-'}")
        body = "\n--- next segment ---\n".join(render_segment(tokenizer, s) for s in t.segments)
        blocks.append(header + (f"\nerror: {t.error}" if t.error else "") + "\n" + body)
    path.write_text(f"Trained tokens as they are; masked tokens in {MASK_OPEN}...{MASK_CLOSE}.\n\n" + "\n\n".join(blocks) + "\n")
