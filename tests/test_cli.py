"""The agentrl command line, run as a user runs it (a subprocess of the installed console script)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def agentrl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_envs_lists_the_builtin_math_env():
    result = agentrl("envs")
    assert result.returncode == 0 and "agentrl/Math-v0" in result.stdout.split()


def test_check_env_passes_the_math_env_with_template_conformance():
    result = agentrl("check-env", "agentrl/Math-v0", "--hf-checkpoint", "smollm2-135m")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout and "stitched token ids equal a full render" in result.stdout


def test_unknown_env_id_is_one_line_with_a_suggestion():
    result = agentrl("check-env", "agentrl/Maths-v0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "agentrl/Maths-v0" in lines[0] and "Did you mean" in lines[0] and "agentrl/Math-v0" in lines[0]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ('{"input": "1+1?", "label": "2"}\n{"input": "2+2?", "label": \n', "tasks.jsonl:2: not valid JSON"),
        ('{"question": "1+1?", "label": "2"}\n', "tasks.jsonl:1: missing field 'input' (set --input-key)"),
    ],
)
def test_bad_task_file_is_one_line_naming_file_and_line(tmp_path, content, fragment):
    data = tmp_path / "tasks.jsonl"
    data.write_text(content)
    result = agentrl("rollout", "--env", "agentrl/Math-v0", "--prompt-data", str(data), "--output", str(tmp_path / "out.jsonl"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_rollout_writes_trajectories_and_prints_a_summary(tmp_path):
    data = tmp_path / "tasks.jsonl"
    data.write_text('{"input": "What is 2 + 3?", "label": "5"}\n{"input": "What is 4 + 4?", "label": "8"}\n')
    out = tmp_path / "out.jsonl"
    result = agentrl("rollout", "--env", "agentrl/Math-v0", "--prompt-data", str(data), "--n-samples-per-prompt", "2",
                     "--rollout-max-response-len", "16", "--seed", "0", "--output", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and {r["schema_version"] for r in records} == {1}
    assert [(r["task_index"], r["sample_index"]) for r in records] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 4 and summary["tokens_per_s"] > 0 and set(summary["termination"]) <= {"done", "length"}
