"""metrics.jsonl survives a kill mid-append, holds strict JSON only, and plotting can run off the
event loop."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from agentrl.errors import DataError
from agentrl.metrics import MetricsLogger
from tests.loop_probe import loop_probe


def strict_records(path):
    def refuse(constant):
        raise AssertionError(f"bare {constant} in {path}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_truncated_last_line_is_dropped_with_a_warning_and_appends_stay_valid(tmp_path, caplog):
    logger = MetricsLogger(tmp_path)
    logger.log(1, {"rollout/reward_mean": 0.25})
    logger.log(2, {"rollout/reward_mean": 0.5})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rollout/rew')  # the kill landed mid-append
    logger = MetricsLogger(tmp_path)
    assert f"{tmp_path / 'metrics.jsonl'}:3" in caplog.text and "truncated" in caplog.text
    assert logger.history["rollout/reward_mean"] == [(1, 0.25), (2, 0.5)]
    logger.log(3, {"rollout/reward_mean": 0.75})
    logger.close()
    assert [r["step"] for r in strict_records(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_complete_last_line_without_its_newline_is_kept_and_appends_stay_valid(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "rollout/reward_mean": 0.25}\n{"step": 2, "rollout/reward_mean": 0.5}')
    logger = MetricsLogger(tmp_path)
    logger.log(3, {"rollout/reward_mean": 0.75})
    logger.close()
    assert [r["step"] for r in strict_records(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_a_corrupt_line_in_the_middle_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1}\n{"step": 2, "x"\n{"step": 3, "x": 3}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not a JSON object") as info:
        MetricsLogger(tmp_path)
    assert "\n" not in str(info.value)
    path.write_text('{"step": 1, "x": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{path}:2: not a JSON object"):
        MetricsLogger(tmp_path)


def test_records_are_strict_json_down_to_nested_values(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log(1, {
        "a": float("nan"), "nested": {"b": float("inf"), "c": [1.0, -math.inf, torch.tensor(2.0)]},
        "tensor": torch.tensor(float("nan")), "array": np.array([0.5, np.nan]), "numpy": np.float32(0.25), "text": "ok",
    })
    logger.close()
    [record] = strict_records(tmp_path / "metrics.jsonl")
    assert record["a"] is None and record["tensor"] is None and record["numpy"] == 0.25 and record["text"] == "ok"
    assert record["nested"] == {"b": None, "c": [1.0, None, 2.0]} and record["array"] == [0.5, None]


def test_resume_reads_the_history_back_and_plot_draws_it(tmp_path):
    logger = MetricsLogger(tmp_path)
    logger.log(1, {"rollout/reward_mean": 0.25, "eval/small/reward_mean": 0.5})
    logger.close()
    logger = MetricsLogger(tmp_path)
    assert logger.history["eval/small/reward_mean"] == [(1, 0.5)]
    assert logger.plot().stat().st_size > 0
    logger.close()


async def test_log_does_not_draw_and_alog_draws_off_the_event_loop(tmp_path, monkeypatch):
    savefig = Figure.savefig

    def slow_savefig(self, *args, **kwargs):
        time.sleep(0.5)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", slow_savefig)
    logger = MetricsLogger(tmp_path)
    started = time.perf_counter()
    logger.log(1, {"rollout/reward_mean": 0.25})
    assert time.perf_counter() - started < 0.4 and not (tmp_path / "reward_curves.png").exists()
    async with loop_probe() as probe:
        await logger.alog(2, {"rollout/reward_mean": 0.5})
    assert probe.ticks >= 10, f"the event loop was blocked while plotting ({probe.ticks} ticks)"
    assert (tmp_path / "reward_curves.png").stat().st_size > 0
    assert [r["step"] for r in strict_records(tmp_path / "metrics.jsonl")] == [1, 2]
    logger.close()
