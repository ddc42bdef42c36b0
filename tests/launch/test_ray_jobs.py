"""The Ray launcher on a real Ray cluster (``ray start --head`` on this machine, logical CPU
bundles, gloo), driven as users drive it: ``ray job submit -- agentrl train ...``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.launch.ray_helpers import ENV, ROUTER, Head, dumped, processes, start_head, steps, stop_head, train_args, wait_for
from tests.launch.ray_plugins import actor_pids


@pytest.fixture(scope="module")
def head():
    yield start_head(num_cpus=8)
    stop_head()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray_data") / "tasks.jsonl"
    path.write_text("".join(json.dumps({"input": f"What is {i} + 1?", "label": str(i + 1)}) + "\n" for i in range(8)))
    return path


@pytest.fixture(scope="module")
def two_ranks(head: Head, tiny_llama_dir, data, tmp_path_factory):
    """A submitted job: 2 trainer ranks (gloo), 1 agentrl serve engine behind sglang-router, 2 steps."""
    out = tmp_path_factory.mktemp("two_ranks") / "run"
    job = head.submit("two-ranks", "agentrl", "train", *train_args(tiny_llama_dir, data, out, "--num-rollout", "2",
                                                                  "--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "1"))
    return job, out


@pytest.fixture(scope="module")
def one_rank(head: Head, tiny_llama_dir, data, tmp_path_factory):
    """The same as a job of 1 trainer rank and 1 engine, 3 steps, through ``python -m agentrl.train``."""
    out = tmp_path_factory.mktemp("one_rank") / "run"
    job = head.submit("one-rank", sys.executable, "-m", "agentrl.train", *train_args(tiny_llama_dir, data, out, "--num-rollout", "3",
                                                                                    "--rollout-num-gpus", "1"))
    return job, out


def test_a_submitted_job_trains_two_ranks_over_gloo_with_an_engine_behind_the_router(head, two_ranks):
    job, out = two_ranks
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert head.status("two-ranks") == "SUCCEEDED"
    rows = steps(out)
    assert sorted(rows) == [1, 2]
    for row in rows.values():  # the ranks' log-probs of the tokens the engine sampled equal the engine's (fp32)
        assert row["train/train_rollout_logprob_abs_diff"] < 1e-4 and row["train/tokens"] > 0
    assert (out / "checkpoints" / "latest").read_text() == "step_00002" and (out / "hf_model" / "model.safetensors").is_file()
    assert "trainer ranks up: rank 0 pid" in job.stdout + job.stderr  # logs stream to the job


def test_the_ray_launcher_reproduces_the_local_launcher_exactly(one_rank, tiny_llama_dir, data, tmp_path):
    job, out = one_rank
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    local = tmp_path / "local"
    env = {k: v for k, v in ENV.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(os.getcwd())}
    run = subprocess.run([sys.executable, "-m", "agentrl.train", *train_args(tiny_llama_dir, data, local, "--num-rollout", "3",
                                                                              "--launcher", "local", "--rollout-num-engines", "1")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    ray_steps, local_steps = steps(out), steps(local)
    assert sorted(ray_steps) == sorted(local_steps) == [1, 2, 3]
    for step in (1, 2, 3):
        assert token_ids(dumped(out, step)) == token_ids(dumped(local, step))  # the same sampled ids and masks
        assert [r["rewards"] for r in dumped(out, step)] == [r["rewards"] for r in dumped(local, step)]
        for key in ("rollout/reward_mean", "train/pg_loss", "train/grad_norm"):
            assert ray_steps[step][key] == local_steps[step][key], (step, key)
        # the engines' own log-probs: the same to float rounding (the Ray engine computes on its bundle's 2 threads)
        for ours, theirs in zip(dumped(out, step), dumped(local, step)):
            for a, b in zip(ours["segments"], theirs["segments"]):
                torch.testing.assert_close(torch.tensor(a["rollout_logprobs"]), torch.tensor(b["rollout_logprobs"]), rtol=0, atol=1e-5)


def test_two_ranks_update_the_weights_as_one_rank_does(two_ranks, one_rank):
    (_, two), (_, one) = two_ranks, one_rank
    assert token_ids(dumped(two, 1)) == token_ids(dumped(one, 1))  # the same batch
    weights = [torch.load(run / "checkpoints" / "step_00001" / "state.pt", weights_only=True)["trainer"]["model"] for run in (two, one)]
    for name, tensor in weights[1].items():
        torch.testing.assert_close(weights[0][name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(t, s) for t, s in zip(weights[1].values(), torch.load(
        one / "checkpoints" / "step_00002" / "state.pt", weights_only=True)["trainer"]["model"].values()))  # the weights do move


def test_a_killed_engine_actor_is_relaunched_and_the_run_trains_only_whole_episodes(head, tiny_llama_dir, data, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "killed"
    job = head.submit("kill-engine", "agentrl", "train", *train_args(
        tiny_llama_dir, data, out, "--num-rollout", "3", "--rollout-num-gpus", "2", "--router-policy", "round_robin",
        "--env", "tests.launch.ray_plugins:test/KillEngineActor-v0", "--rollout-max-response-len", "16",
        "--config", str(_yaml(tmp_path, {"env-kwargs": {"marker": str(marker)}}))))
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert marker.is_file()
    rows = steps(out)
    assert [rows[s]["weight_version"] for s in (1, 2, 3)] == [1, 2, 3]
    for step in (1, 2, 3):
        records = dumped(out, step)
        assert {r["termination"] for r in records} <= {"done", "length", "abort"}
        assert rows[step]["rollout/excluded"] == sum(r["termination"] == "abort" for r in records)
    launches = sum(log.read_text().count("# agentrl: ") for log in (out / "engines").glob("engine-*.log"))
    assert launches >= 3  # two launches and one relaunch


def test_a_killed_trainer_actor_fails_the_job_within_a_minute_naming_it(head, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "run"
    job = head.submit("kill-trainer", "agentrl", "train", *train_args(tiny_llama_dir, data, out, "--num-rollout", "200",
                                                                      "--actor-num-gpus-per-node", "2", "--rollout-num-gpus", "1"), wait=False)
    assert job.returncode == 0, job.stderr
    wait_for(lambda: (out / "metrics.jsonl").exists() and steps(out), 300, "the job's first step")
    victim = actor_pids("TrainerActor")[-1]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: head.status("kill-trainer") in ("FAILED", "SUCCEEDED", "STOPPED"), 120, "the job to end")
    assert head.status("kill-trainer") == "FAILED" and time.monotonic() - killed <= 60
    logs = head.logs("kill-trainer")
    assert "trainer rank" in logs and "the actor died" in logs, logs[-3000:]


def test_a_killed_router_fails_the_job_naming_the_router(head, tiny_llama_dir, data, tmp_path):
    """The fleet's monitor runs in the rollout manager actor, whose starting call has long returned: its failure
    must still reach the job (the next rollout or push raises it), not only the actor's log."""
    out = tmp_path / "run"
    job = head.submit("kill-router", "agentrl", "train", *train_args(tiny_llama_dir, data, out, "--num-rollout", "200",
                                                                    "--rollout-num-gpus", "1"), wait=False)
    assert job.returncode == 0, job.stderr
    wait_for(lambda: (out / "metrics.jsonl").exists() and steps(out), 300, "the job's first step")
    [(router, _)] = processes(ROUTER)
    os.kill(router, signal.SIGKILL)
    wait_for(lambda: head.status("kill-router") in ("FAILED", "SUCCEEDED", "STOPPED"), 180, "the job to end")
    logs = head.logs("kill-router")
    assert head.status("kill-router") == "FAILED" and "FleetError: the engine fleet failed: sglang-router exited with status -9" in logs, logs[-3000:]


def test_an_actor_that_does_not_start_in_time_fails_the_job_naming_it_and_the_flag(head, tiny_llama_dir, data, tmp_path):
    job = head.submit("slow-setup", "agentrl", "train", *train_args(tiny_llama_dir, data, tmp_path / "run", "--num-rollout", "1",
                                                                   "--rollout-num-gpus", "1", "--actor-setup-timeout", "0.5"))
    assert job.returncode != 0 and head.status("slow-setup") == "FAILED"
    logs = head.logs("slow-setup")
    assert "trainer rank 0, opening the group's rendezvous did not finish within 0.5 s (--actor-setup-timeout)" in logs, logs[-3000:]
    wait_for(lambda: not actor_pids("TrainerActor"), 60, "the trainer actor to be killed")


def test_ray_job_stop_leaves_no_process_behind(head, tiny_llama_dir, data, tmp_path):
    out = tmp_path / "run"
    job = head.submit("stopped", "agentrl", "train", *train_args(tiny_llama_dir, data, out, "--num-rollout", "200", "--rollout-num-gpus", "1"),
                      wait=False)
    assert job.returncode == 0, job.stderr
    wait_for(lambda: (out / "metrics.jsonl").exists() and steps(out), 300, "the job's first step")
    assert processes(rf"agentrl\.cli serve .*{tiny_llama_dir}") and processes(ROUTER) and processes(r"^ray::(TrainerActor|RolloutManagerActor)")
    head.stop("stopped")
    wait_for(lambda: head.status("stopped") == "STOPPED", 120, "the job to stop")

    def gone() -> bool:
        return not (processes(rf"agentrl\.cli serve .*{tiny_llama_dir}") or processes(ROUTER)
                    or processes(r"^ray::(TrainerActor|EngineActor|RolloutManagerActor)") or processes(rf"agentrl.* train .*{out}"))

    wait_for(gone, 60, "every agentrl serve, router, trainer and driver process of the job to exit")


def token_ids(records):
    return [[(s["prompt_ids"], s["response_ids"], s["loss_mask"]) for s in r["segments"]] for r in records]


def _yaml(tmp_path, values):
    path = tmp_path / "extra.yaml"
    path.write_text(json.dumps(values))
    return path
