"""`agentrl train` end to end on a tiny randomly initialised Llama with SmolLM2's tokenizer:
metrics, plots, dumps, checkpoints, export, resume, and the one-step-async loop."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentrl.config import load_config
from agentrl.errors import ConfigError
from agentrl.train import train
from agentrl.trainers.torch_trainer import TorchTrainer


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"input": f"What is {i} + 1?", "label": str(i + 1)}) + "\n" for i in range(6)))
    return path


def args(tiny_llama_dir, data, out, *extra):
    return ["--hf-checkpoint", str(tiny_llama_dir), "--prompt-data", str(data), "--eval-prompt-data", "small", str(data),
            "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--rollout-max-response-len", "8",
            "--eval-interval", "2", "--save-interval", "1", "--output-dir", str(out), "--lr", "1e-4", "--deterministic", *extra]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", [[], ["--train-async"]])
def test_train_writes_what_a_user_sees(tiny_llama_dir, data, tmp_path, mode):
    out = tmp_path / "run"
    train(load_config(args(tiny_llama_dir, data, out, "--num-rollout", "3", *mode)))
    rows = records(out)
    steps = [r for r in rows if "rollout/reward_mean" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for key in ("perf/step_time_s", "perf/rollout_time_s", "perf/train_time_s", "weight_version"):
        assert all(key in r for r in steps), key
    synced = steps[1:] if mode else steps  # async: weights trained in step k are pushed at the start of step k + 1
    assert all("perf/weight_sync_time_s" in r for r in synced)
    assert [r["step"] for r in rows if "eval/small/reward_mean" in r] == [0, 2, 3]
    assert [r["weight_version"] for r in steps] == ([1, 2, 3] if not mode else [0, 1, 2])
    assert (out / "reward_curves.png").stat().st_size > 0 and (out / "config.json").is_file()
    assert "⟦" in (out / "rollouts" / "step_00001.txt").read_text()
    assert (out / "checkpoints" / "latest").read_text() == "step_00003"
    assert (out / "hf_model" / "model.safetensors").is_file() and (out / "hf_model" / "tokenizer.json").is_file()
    assert any((out / "tensorboard").iterdir())


def test_skip_eval_before_train_evaluates_every_interval_and_at_the_end_only(tiny_llama_dir, data, tmp_path):
    out = tmp_path / "run"
    train(load_config(args(tiny_llama_dir, data, out, "--num-rollout", "3", "--skip-eval-before-train", "--save-interval", "3")))
    assert [r["step"] for r in records(out) if "eval/small/reward_mean" in r] == [2, 3]


def test_a_run_killed_during_step_3_resumes_to_the_same_steps_3_and_4(tiny_llama_dir, data, tmp_path, monkeypatch):
    """SIGKILL, not a clean stop: the killed process gets no chance to save anything more."""
    full, part = tmp_path / "full", tmp_path / "part"
    evals = tmp_path / "eval.jsonl"  # a long eval at the start of step 3 (eval-interval 2) is where the kill lands
    evals.write_text("".join(json.dumps({"input": f"What is {i} + 2?", "label": str(i + 2)}) + "\n" for i in range(1500)))
    # a reward that varies within groups, so every step trains and the optimizer state matters
    (tmp_path / "length_rm.py").write_text("async def reward(args, sample, **kw):\n    return float(len(sample.response) % 3)\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.syspath_prepend(str(tmp_path))
    run_args = lambda out, *extra: [  # noqa: E731
        *args(tiny_llama_dir, data, out, "--num-rollout", "4", "--lr-decay-style", "cosine", "--custom-rm-path", "length_rm.reward", *extra),
        "--eval-prompt-data", "small", str(evals),
    ]
    train(load_config(run_args(full)))

    proc = subprocess.Popen([sys.executable, "-m", "agentrl.cli", "train", *run_args(part)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = part / "checkpoints" / "latest"
    deadline = time.monotonic() + 300
    while not (latest.is_file() and latest.read_text() == "step_00002"):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never saved step 2"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert latest.read_text() == "step_00002", "the kill came after step 3 had finished"
    assert not (part / "rollouts" / "step_00003.jsonl").exists()

    train(load_config(run_args(part, "--load", str(part / "checkpoints"))))
    full_steps = {r["step"]: r for r in records(full) if "rollout/reward_mean" in r}
    part_steps = {r["step"]: r for r in records(part) if "rollout/reward_mean" in r}
    assert sorted(part_steps) == [1, 2, 3, 4]
    for step in (3, 4):  # same tasks (data position restored) and same sampled tokens (--deterministic)
        for key in ("rollout/response_len_mean", "rollout/reward_mean"):
            assert part_steps[step][key] == full_steps[step][key], key
        for key in ("train/pg_loss", "train/grad_norm", "train/lr"):
            assert part_steps[step][key] == pytest.approx(full_steps[step][key], rel=1e-4, abs=1e-7), key
    dump = lambda run, step: [r["segments"] for r in map(json.loads, (run / "rollouts" / f"step_{step:05d}.jsonl").read_text().splitlines())]  # noqa: E731
    assert dump(part, 3) == dump(full, 3) and dump(part, 4) == dump(full, 4)


SLIME_GENERATE = '''
from agentrl.compat.slime import Sample, post
from transformers import AutoTokenizer


async def generate(args, sample, sampling_params):
    """Written as for slime: its own /generate call, an observation the model did not write."""
    tokenizer = AutoTokenizer.from_pretrained(args.hf_checkpoint)
    prompt_ids = tokenizer.encode(sample.prompt, add_special_tokens=False)
    url = f"http://{args.sglang_router_ip}:{args.sglang_router_port}/generate"
    out = await post(url, {"input_ids": prompt_ids, "sampling_params": sampling_params, "return_logprob": True})
    if sample.group_index == 1:  # task 1 (slime's index numbers the samples)
        raise RuntimeError("this task's tool is down")
    ids = [t for _, t, _ in out["meta_info"]["output_token_logprobs"]]
    logprobs = [lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]]
    observation = tokenizer.encode("<information>42</information>", add_special_tokens=False)
    sample.tokens = prompt_ids + ids + observation
    sample.response_length = len(ids) + len(observation)
    sample.loss_mask = [1] * len(ids) + [0] * len(observation)
    sample.rollout_log_probs = logprobs + [0.0] * len(observation)
    sample.response = out["text"]
    length = out["meta_info"]["finish_reason"]["type"] == "length"
    sample.status = Sample.Status.TRUNCATED if length else Sample.Status.COMPLETED
    return sample
'''


def test_a_slime_generate_function_runs_against_the_engine_over_http(tiny_llama_dir, data, tmp_path, monkeypatch):
    (tmp_path / "my_generate.py").write_text(SLIME_GENERATE)
    (tmp_path / "length_rm.py").write_text("async def reward(args, sample, **kw):\n    return float(len(sample.response) % 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    train(load_config(args(tiny_llama_dir, data, out, "--num-rollout", "2", "--custom-generate-function-path", "my_generate.generate",
                           "--custom-rm-path", "length_rm.reward", "--no-bf16", "--rollout-batch-size", "3")))
    steps = [r for r in records(out) if "rollout/reward_mean" in r]
    first = steps[0]
    assert first["rollout/excluded"] == 2  # task 1's two samples: the function raised; the step trained on the rest
    assert first["rollout/termination/env_error"] == 2
    # the trainer's log-probs of the tokens the server returned equal the server's (same weights, fp32)
    assert first["train/train_rollout_logprob_abs_diff"] < 1e-4
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_00001.jsonl").read_text().splitlines()]
    kept = [r for r in dumped if r["termination"] != "env_error"]
    assert all(r["segments"][0]["loss_mask"][-1] == 0 for r in kept)  # the observation is masked
    assert "RuntimeError: this task's tool is down" in next(r["error"] for r in dumped if r["termination"] == "env_error")


def test_dynamic_sampling_with_partial_rollout_trains_only_groups_with_reward_spread(tiny_llama_dir, data, tmp_path, monkeypatch):
    # Even answers: every sample earns 0 (the group is dropped); odd ones: the parity of the response's length.
    (tmp_path / "parity_rm.py").write_text("async def reward(args, sample, **kw):\n"
                                            "    return float(len(sample.response) % 2) if int(sample.label) % 2 else 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    train(load_config(args(tiny_llama_dir, data, out, "--num-rollout", "3", "--custom-rm-path", "parity_rm.reward", "--no-bf16",
                           "--over-sampling-batch-size", "3", "--partial-rollout", "--mask-offpolicy-in-partial-rollout",
                           "--dynamic-sampling-filter-path", "agentrl.rollout.filters.check_reward_nonzero_std")))
    steps = [r for r in records(out) if "rollout/reward_mean" in r]
    assert len(steps) == 3
    for step in steps:
        assert step["over_sampling/groups_launched"] >= 3 and "partial_rollout/buffer_groups" in step
        assert step["over_sampling/groups_launched"] == (
            2 + step["over_sampling/groups_dropped"] + step["over_sampling/groups_leftover"]), step
    dumped = [json.loads(line) for line in (out / "rollouts" / "step_00002.jsonl").read_text().splitlines()]
    assert len(dumped) == 4
    for group in (dumped[:2], dumped[2:]):  # every trained group has a reward spread
        assert len({r["reward"] for r in group}) == 2
    drops = sum(v for s in steps for k, v in s.items() if k.startswith("dynamic_filter/drop_zero_std_"))
    assert drops == sum(s["over_sampling/groups_dropped"] for s in steps) and drops > 0


def megatron_args(tiny_llama_dir, data, out, backend, *extra):
    """Two fp32 steps whose groups have a reward spread (so both train), a checkpoint after each."""
    return args(tiny_llama_dir, data, out, "--num-rollout", "2", "--no-bf16", "--custom-rm-path", "length_rm.reward",
                "--train-backend", backend, *extra)


@pytest.fixture
def length_rm(tmp_path, monkeypatch):
    (tmp_path / "length_rm.py").write_text("async def reward(args, sample, **kw):\n    return float(len(sample.response) % 3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_train_backend_megatron_trains_as_the_torch_backend_does(tiny_llama_dir, data, tmp_path, length_rm):
    """The whole loop with the Megatron trainer: same rewards, losses and gradient norms as torch."""
    runs = {backend: tmp_path / backend for backend in ("torch", "megatron")}
    for backend, out in runs.items():
        train(load_config(megatron_args(tiny_llama_dir, data, out, backend)))
    torch_steps, megatron_steps = ({r["step"]: r for r in records(out) if "rollout/reward_mean" in r} for out in runs.values())
    assert sorted(megatron_steps) == [1, 2]
    for step in (1, 2):  # step 2's episodes were sampled with the weights each trainer pushed after step 1
        got, want = megatron_steps[step], torch_steps[step]
        assert got["rollout/reward_mean"] == want["rollout/reward_mean"] and got["rollout/response_len_mean"] == want["rollout/response_len_mean"]
        assert got["train/optimizer_steps"] == 1 and got["train/grad_norm"] > 0
        for key in ("train/pg_loss", "train/grad_norm", "train/lr", "train/ppo_kl", "train/pg_clipfrac"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (step, key)
    out = runs["megatron"]
    assert (out / "checkpoints" / "latest").read_text() == "step_00002"
    assert (out / "hf_model" / "model.safetensors").is_file() and json.loads((out / "config.json").read_text())["train_backend"] == "megatron"


def test_train_backend_megatron_resumes_a_step_exactly_with_load(tiny_llama_dir, data, tmp_path, length_rm):
    full, part = tmp_path / "full", tmp_path / "part"
    train(load_config(megatron_args(tiny_llama_dir, data, full, "megatron")))
    shutil.copytree(full / "checkpoints" / "step_00001", part / "from" / "step_00001")  # as if the run had stopped after step 1
    (part / "from" / "latest").write_text("step_00001")
    train(load_config(megatron_args(tiny_llama_dir, data, part / "run", "megatron", "--load", str(part / "from"))))
    resumed = {r["step"]: r for r in records(part / "run") if "rollout/reward_mean" in r}
    assert sorted(resumed) == [2]
    want = next(r for r in records(full) if r.get("step") == 2 and "rollout/reward_mean" in r)
    for key in ("rollout/reward_mean", "rollout/response_len_mean", "train/pg_loss", "train/grad_norm", "train/lr"):
        assert resumed[2][key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key


BROKEN_ENV = '''
from agentrl.envs import Env, StepResult, register


class BrokenReset(Env):
    async def reset(self, task, *, seed=None):
        return self.config.difficulty  # a bug in the env: every episode fails


    async def step(self, action):
        return StepResult([], 0.0, True, False, {})


register("broken/Reset-v0", BrokenReset)
'''


def _cli(*argv, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "agentrl.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _pythonpath(path):
    return {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.mark.parametrize("sampling", [[], ["--over-sampling-batch-size", "3", "--dynamic-sampling-filter-path",
                                             "agentrl.rollout.filters.check_reward_nonzero_std"]], ids=["plain", "dynamic"])
def test_a_run_whose_every_episode_fails_exits_nonzero_with_the_traceback_and_saves_nothing(tiny_llama_dir, data, tmp_path, sampling):
    (tmp_path / "broken_env.py").write_text(BROKEN_ENV)
    out = tmp_path / "run"
    proc = _cli("train", *args(tiny_llama_dir, data, out, "--num-rollout", "2", "--env", "broken_env:broken/Reset-v0", *sampling),
                env=_pythonpath(tmp_path))
    stdout, stderr = proc.communicate(timeout=300)  # dynamic sampling used to relaunch the failing groups forever
    assert proc.returncode == 1, stderr[-3000:]
    assert "rollout step 1: none of its 4 episodes can be trained on (4 env_error)" in stderr
    assert "AttributeError" in stderr and "Traceback (most recent call last)" in stderr and "self.config.difficulty" in stderr
    assert not (out / "checkpoints").exists() and not (out / "hf_model").exists()
    assert stdout == ""  # no summary of a run that did not train


FLAKY_EVAL_ENV = '''
from agentrl.envs import register
from agentrl.envs.math_env import MathEnv


class FlakyEval(MathEnv):
    """The math env, whose episodes fail in evaluation: every one, or those of odd tasks."""

    def __init__(self, fail="none", **kwargs):
        super().__init__(**kwargs)
        self.fail = fail

    async def reset(self, task, *, seed=None):
        if self.fail == "all" or (self.fail == "odd" and task.index % 2):
            raise RuntimeError("the eval env broke")
        return await super().reset(task, seed=seed)


register("flaky/Eval-v0", FlakyEval)
'''


@pytest.mark.parametrize("fail", ["odd", "all"])
def test_an_evaluation_that_lost_episodes_says_so(tiny_llama_dir, data, tmp_path, fail):
    (tmp_path / "flaky_env.py").write_text(FLAKY_EVAL_ENV)
    out = tmp_path / "run"
    proc = _cli("train", *args(tiny_llama_dir, data, out, "--num-rollout", "1", "--save-interval", "1", "--env", "flaky_env:flaky/Eval-v0",
                               "--eval-env-kwargs", json.dumps({"fail": fail})), env=_pythonpath(tmp_path))
    _, stderr = proc.communicate(timeout=300)
    if fail == "odd":  # 3 of the 6 eval tasks fail: the run goes on, and says so at each evaluation
        assert proc.returncode == 0, stderr[-3000:]
        assert "WARNING agentrl.train: evaluation 'small' at step 0: its metrics average only the episodes that finished; 3 of 6 episodes excluded (3 env_error)" in stderr
        assert "the eval env broke" in stderr
        assert [r["eval/small/excluded"] for r in records(out) if "eval/small/excluded" in r] == [3, 3]
    else:  # every evaluation lost every episode: training (its env kwargs unbroken) goes on and saves, then the run fails
        assert proc.returncode == 1, stderr[-3000:]
        assert "WARNING agentrl.train: evaluation 'small' at step 0: its metrics average only the episodes that finished; 6 of 6 episodes excluded (6 env_error)" in stderr
        assert "but these evaluations lost every episode, so measured nothing: 'small' at step 0 (6 of 6 episodes excluded (6 env_error)" in stderr
        assert "'small' at step 1 (6 of 6" in stderr and "the eval env broke" in stderr
        assert (out / "hf_model" / "config.json").exists() and (out / "checkpoints").exists()


def _children(pid):
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def _wait_for_step(proc, out, step, timeout=300):
    deadline = time.monotonic() + timeout
    latest = out / "checkpoints" / "latest"
    while not (latest.is_file() and latest.read_text() == f"step_{step:05d}"):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"the run never finished step {step}"
        time.sleep(0.05)


def test_sigterm_stops_launched_engines_and_the_router_and_says_where_to_resume(tiny_llama_dir, data, tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", *args(tiny_llama_dir, data, out, "--num-rollout", "50", "--rollout-num-engines", "1", "--weight-sync", "disk"))
    _wait_for_step(proc, out, 1)
    children = _children(proc.pid)
    assert len(children) >= 2  # an agentrl serve engine and sglang-router, each in its own session
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "interrupted by SIGTERM during step" in stderr and f"resume with --load {out / 'checkpoints'}" in stderr
    assert "Traceback" not in stderr
    assert not [pid for pid in children if _alive(pid)]


def test_ctrl_c_ends_with_a_message_not_a_traceback(tiny_llama_dir, data, tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", *args(tiny_llama_dir, data, out, "--num-rollout", "50"), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_step(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted by SIGINT during step 2" in stderr and "resume with --load" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr


def test_train_under_torchrun_refuses_rather_than_training_one_rank_copy_per_process(tiny_llama_dir, data, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="WORLD_SIZE=2"):
        train(load_config(args(tiny_llama_dir, data, tmp_path / "run", "--num-rollout", "1")))


def test_dumps_checkpoints_plots_and_the_export_run_off_the_event_loop(tiny_llama_dir, data, tmp_path, monkeypatch):
    """With --train-async a rollout is pending while these run: none may block the event loop (nor may startup's
    reading of task files and loading of the engine's model: a signal is handled only when the loop runs)."""
    import threading
    from types import SimpleNamespace

    import agentrl.engines.backend
    import agentrl.launch.local
    import agentrl.metrics
    import agentrl.train

    threads: dict[str, set[bool]] = {}

    names: dict[str, set[str]] = {}

    def recorded(name, fn):
        def wrapper(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread() is threading.main_thread())
            names.setdefault(name, set()).add(threading.current_thread().name.split("_")[0])
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(agentrl.train, "write_dump", recorded("dump", agentrl.train.write_dump))
    monkeypatch.setattr(agentrl.launch.local, "save_checkpoint", recorded("checkpoint", agentrl.launch.local.save_checkpoint))
    monkeypatch.setattr(agentrl.metrics, "_draw", recorded("plot", agentrl.metrics._draw))
    monkeypatch.setattr(TorchTrainer, "save_hf", recorded("export", TorchTrainer.save_hf))
    monkeypatch.setattr(agentrl.launch.local, "RolloutManager", recorded("task files", agentrl.launch.local.RolloutManager))
    model_class = agentrl.engines.backend.AutoModelForCausalLM
    monkeypatch.setattr(agentrl.engines.backend, "AutoModelForCausalLM", SimpleNamespace(from_pretrained=recorded("engine model", model_class.from_pretrained)))
    train(load_config(args(tiny_llama_dir, data, tmp_path / "run", "--num-rollout", "2", "--train-async")))
    assert threads == {"dump": {False}, "checkpoint": {False}, "plot": {False}, "export": {False}, "task files": {False}, "engine model": {False}}
    # the trainer's work has a thread of its own: env or tool calls that hang in the default pool cannot starve it
    assert names["checkpoint"] == names["export"] == names["task files"] == {"agentrl-trainer"}


def test_a_failing_train_step_under_train_async_cancels_the_rollout_it_overlapped(tiny_llama_dir, data, tmp_path, monkeypatch):
    """The next step's rollout runs beside training: when training fails, it is cancelled and awaited, not left playing."""
    import asyncio

    from agentrl.rollout.manager import RolloutManager

    ends: dict[int, str] = {}
    real_rollout = RolloutManager.rollout

    async def rollout(self, step):
        try:
            result = await real_rollout(self, step)
        except asyncio.CancelledError:
            ends[step] = "cancelled"
            raise
        ends[step] = "finished"
        return result

    def broken(self, sequences, num_samples):
        raise RuntimeError("the trainer broke")

    monkeypatch.setattr(RolloutManager, "rollout", rollout)
    monkeypatch.setattr(TorchTrainer, "train_rollout", broken)
    with pytest.raises(RuntimeError, match="the trainer broke"):
        train(load_config(args(tiny_llama_dir, data, tmp_path / "run", "--num-rollout", "3", "--train-async", "--skip-eval-before-train")))
    assert ends == {0: "finished", 1: "cancelled"}
