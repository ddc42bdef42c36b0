"""The agentrl command line, run as a user runs it (a subprocess of the installed console script)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentrl.cli import main
from agentrl.envs import Action, Env, EnvRegistry, Message, StepResult, Task, ToolCall, registration

REPO_ROOT = Path(__file__).resolve().parents[1]


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


def test_check_env_with_kwargs_the_env_does_not_take_is_one_line_naming_the_flag():
    result = agentrl("check-env", "agentrl/Math-v0", "--env-kwargs", '{"bogus": 1}')
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("agentrl: error: --env-kwargs {\"bogus\": 1}: env 'agentrl/Math-v0' does not take them") and "bogus" in line


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
    records = [json.loads(line) for line in out.read_text().splitlines()]  # in the order the episodes ended
    assert len(records) == 4 and {r["schema_version"] for r in records} == {1}
    assert sorted((r["task_index"], r["sample_index"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["episodes"] == 4 and summary["tokens_per_s"] > 0 and set(summary["termination"]) <= {"done", "length"}


# ---------------------------------------------------------------- rollout settings, streaming and failures (in process)


def name_every_action(text: str) -> tuple[ToolCall, ...]:
    """A ``--tool-parser`` (``tests.test_cli:name_every_action``): every action is one call of ``probe``."""
    return (ToolCall(raw=text, name="probe"),)


class ProbeEnv(Env):
    """Never ends by itself; each step's info tells what reached it: its kwargs, its reset seed,
    and the finish reason and tool-call names of every action so far."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self.seed, self.seen = seed, []
        return [{"role": "user", "content": str(task.prompt)}], {}

    async def step(self, action: Action) -> StepResult:
        self.seen.append([action.finish_reason, [call.name for call in action.tool_calls]])
        return StepResult([{"role": "user", "content": "go on"}], 0.0, False, False, {"kwargs": self.kwargs, "seed": self.seed, "seen": self.seen})


class StallingEnv(ProbeEnv):
    """Task ``hang``: reset takes a minute. Any other task: every step takes 0.2 s."""

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        if task.prompt == "hang":
            await asyncio.sleep(60)
        return await super().reset(task, seed=seed)

    async def step(self, action: Action) -> StepResult:
        await asyncio.sleep(0.2)
        return await super().step(action)


class BrokenEnv(ProbeEnv):
    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        raise AttributeError("'BrokenEnv' object has no attribute 'corpus'")


@pytest.fixture
def cli_envs(monkeypatch):
    """The test envs (``cli/Probe-v0``, ``cli/Stalling-v0``, ``cli/Broken-v0``) in a scoped default registry."""
    reg = EnvRegistry()
    for name, env in (("Probe", ProbeEnv), ("Stalling", StallingEnv), ("Broken", BrokenEnv)):
        reg.register(f"cli/{name}-v0", env)
    monkeypatch.setattr(registration, "registry", reg)
    return reg


def tasks_file(path, *prompts):
    path.write_text("".join(json.dumps({"input": p, "label": "x"}) + "\n" for p in prompts))
    return str(path)


def run_main(capsys, *args: str) -> tuple[int, list[str], str]:
    """``agentrl ARGS`` in this process: exit code, stdout lines, stderr."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def strict_json(line: str) -> Any:
    """``json.loads`` that refuses NaN and infinities, as strict JSON readers do."""
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")
    return json.loads(line, parse_constant=refuse)


def read_records(path) -> list[dict[str, Any]]:
    return [strict_json(line) for line in path.read_text().splitlines()]


def test_every_rollout_setting_reaches_the_runner(tmp_path, tiny_llama_dir, cli_envs, capsys):
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_main(
        capsys, "rollout", "--env", "cli/Probe-v0", "--env-kwargs", '{"tag": "x"}', "--prompt-data", tasks_file(tmp_path / "t.jsonl", "a"),
        "--hf-checkpoint", str(tiny_llama_dir), "--n-samples-per-prompt", "2", "--seed", "0", "--rollout-max-response-len", "2", "--max-turns", "2",
        "--no-end-on-length", "--reset-seed", "sample", "--tool-parser", "tests.test_cli:name_every_action", "--bridge-mode", "segment", "--output", str(out))
    assert code == 0, err
    records = sorted(read_records(out), key=lambda r: r["sample_index"])
    for r in records:  # each turn was cut at 2 tokens and passed on; the episode ended at the turn limit
        assert r["termination"] == "max_turns" and r["info"]["seen"] == [["length", ["probe"]], ["length", ["probe"]]]
        assert r["info"]["kwargs"] == {"tag": "x"} and r["metrics"]["segments"] == 3  # a segment per turn, and the one the limit left empty
    assert records[0]["info"]["seed"] != records[1]["info"]["seed"]  # one reset seed per sample
    assert strict_json(stdout[-1])["termination"] == {"max_turns": 2}


def test_a_hung_env_ends_as_timeout_and_all_failed_exits_nonzero(tmp_path, tiny_llama_dir, cli_envs, capsys):
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    code, stdout, err = run_main(
        capsys, "rollout", "--env", "cli/Stalling-v0", "--prompt-data", tasks_file(tmp_path / "t.jsonl", "hang", "slow"), "--hf-checkpoint", str(tiny_llama_dir),
        "--rollout-max-response-len", "2", "--no-end-on-length", "--rollout-step-timeout", "0.5", "--rollout-episode-timeout", "1.5", "--output", str(out))
    assert time.monotonic() - started < 30
    errors = {r["task_index"]: r["error"] for r in read_records(out) if r["termination"] == "timeout"}
    assert "took longer than step_timeout_s=0.5" in errors[0] and "exceeded episode_timeout_s=1.5" in errors[1]
    assert code == 1 and "every episode failed (2 of 2)" in err and "took longer than step_timeout_s=0.5" in err
    assert strict_json(stdout[-1])["reward_mean"] is None


def test_when_every_episode_fails_the_first_error_is_shown_and_the_summary_is_strict_json(tmp_path, tiny_llama_dir, cli_envs, capsys):
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_main(capsys, "rollout", "--env", "cli/Broken-v0", "--prompt-data", tasks_file(tmp_path / "t.jsonl", "a", "b"),
                                 "--hf-checkpoint", str(tiny_llama_dir), "--n-samples-per-prompt", "2", "--output", str(out))
    assert code == 1
    assert "every episode failed (4 of 4); the first (task 0, sample 0) ended as env_error:" in err
    assert "AttributeError: 'BrokenEnv' object has no attribute 'corpus'" in err
    summary = strict_json(stdout[-1])
    assert summary["reward_mean"] is None and summary["termination"] == {"env_error": 4} and len(read_records(out)) == 4


@pytest.mark.parametrize("kind", ["directory", "under a file"])
def test_an_output_that_cannot_be_written_fails_before_the_model_loads(tmp_path, cli_envs, capsys, kind):
    (tmp_path / "a_file").write_text("x")
    output = tmp_path if kind == "directory" else tmp_path / "a_file" / "out.jsonl"
    code, _, err = run_main(capsys, "rollout", "--env", "cli/Probe-v0", "--prompt-data", tasks_file(tmp_path / "t.jsonl", "a"),
                            "--hf-checkpoint", str(tmp_path / "no_such_model"), "--output", str(output))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and f"--output {output}: " in lines[0], err  # not the model's error: it was never loaded


def test_train_prints_a_strict_json_summary_and_a_run_with_nothing_to_train_fails(tmp_path, tiny_llama_dir, cli_envs, capsys):
    common = ["--prompt-data", tasks_file(tmp_path / "t.jsonl", "a"), "--hf-checkpoint", str(tiny_llama_dir), "--num-rollout", "1",
              "--rollout-batch-size", "1", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "2"]
    code, stdout, err = run_main(capsys, "train", "--env", "cli/Probe-v0", *common, "--output-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert strict_json(stdout[-1])["rollout/excluded"] == 0
    code, stdout, err = run_main(capsys, "train", "--env", "cli/Broken-v0", *common, "--output-dir", str(tmp_path / "broken"))
    assert code == 1 and stdout == [] and "none of its 2 episodes can be trained on (2 env_error)" in err
    assert "Traceback (most recent call last)" in err and not (tmp_path / "broken" / "hf_model").exists()


# ---------------------------------------------------------------- Ctrl-C keeps what finished (a real process)

SLOW_ENV = """
import asyncio
from agentrl.envs import Env, StepResult, register


class Slow(Env):
    async def reset(self, task, *, seed=None):
        await super().reset(task, seed=seed)
        return [{"role": "user", "content": task.prompt}], {}

    async def step(self, action):
        await asyncio.sleep(0.3)
        return StepResult([], 1.0, True, False, {})


register("cli/Slow-v0", Slow)
"""

INTERRUPTIBLE = """
import runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background non-interactive shell starts us with SIGINT ignored
sys.argv = ["agentrl", *sys.argv[1:]]
runpy.run_module("agentrl.cli", run_name="__main__")
"""


def test_ctrl_c_keeps_every_finished_episode(tmp_path, tiny_llama_dir):
    (tmp_path / "slow_env.py").write_text(SLOW_ENV)
    out = tmp_path / "out.jsonl"
    args = ["rollout", "--env", "slow_env:cli/Slow-v0", "--prompt-data", tasks_file(tmp_path / "t.jsonl", *(f"q{i}" for i in range(200))),
            "--hf-checkpoint", str(tiny_llama_dir), "--rollout-max-response-len", "2", "--rollout-concurrency", "2", "--output", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    stderr = tmp_path / "stderr"
    with open(stderr, "w") as err_file:
        process = subprocess.Popen([sys.executable, "-c", INTERRUPTIBLE, *args], env=env, stdout=subprocess.DEVNULL, stderr=err_file)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() or out.read_text().count("\n") < 3:
            assert time.monotonic() < deadline and process.poll() is None, stderr.read_text()[-2000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
    err = stderr.read_text()
    assert time.monotonic() - interrupted < 15 and process.returncode == 130, err[-2000:]
    records = read_records(out)  # every line is a whole record
    assert 3 <= len(records) < 200 and all(r["termination"] == "done" for r in records)
    assert f"interrupted: kept the {len(records)} episodes that had finished in {out}" in err
