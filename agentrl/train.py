"""``agentrl train``: the training loop, read top to bottom.

Each step: tasks -> episodes on the engine -> trajectories -> advantages and packed batches ->
optimizer steps -> weights pushed to the engine (version + 1). Around it: evaluation every
``--eval-interval`` steps, checkpoints every ``--save-interval`` steps, metrics, dumps and plots
in ``--output-dir``. With ``--train-async`` the next rollout runs while this step trains (its
samples are one weight version behind).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import AutoTokenizer

from agentrl.checkpoint import LoopState, find_checkpoint, read_checkpoint, save_checkpoint
from agentrl.compat.slime_generate import SlimeGenerateRunner
from agentrl.config import TrainConfig
from agentrl.data import TaskKeys, TaskStream, load_tasks
from agentrl.engines.backend import RolloutBackend, open_backend
from agentrl.envs import Env, make
from agentrl.errors import ConfigError, TrainingError
from agentrl.metrics import MetricsLogger
from agentrl.models.resolve import resolve_model
from agentrl.plugins import load_function
from agentrl.rewards.hub import RewardOverride, make_reward_fn
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Trajectory, derive_seed, summarize
from agentrl.rollout.dump import write_dump
from agentrl.rollout.filters import load_group_filter
from agentrl.rollout.partial import PartialRolloutBuffer, load_buffer_filter, pop_first
from agentrl.rollout.sampling import collect_groups
from agentrl.shutdown import Interrupted, run_until_signalled
from agentrl.trainers.batching import build_train_sequences
from agentrl.trainers.torch_trainer import TorchTrainer

PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
"""Used with ``--no-apply-chat-template``: the prompt text as it is."""


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the whole training job; returns the last logged metrics.

    Raises:
        TrainingError: a rollout step left no episode to train on (the message holds the first
            failed episode's error and traceback); nothing is saved then.
        Interrupted: SIGINT or SIGTERM stopped the run (launched engines are stopped first);
            the message says where to resume from.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(f"agentrl train runs one trainer process, and found WORLD_SIZE={world} (torchrun?): run it as one process; "
                          "several trainer ranks are not set up by this launcher")
    run = _Run(cfg)
    try:
        return asyncio.run(run_until_signalled(run.main()))
    except Interrupted as e:
        raise Interrupted(f"{e} during step {run.step}; {run.resume_hint()}", e.signum) from None


class _Run:
    """The pieces of one run, built once, and the loop over them."""

    def __init__(self, cfg: TrainConfig) -> None:
        """Everything that can fail on bad input (data, checkpoint, plug-in paths) is read
        before the model loads."""
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        keys = TaskKeys(cfg.input_key, cfg.label_key, cfg.metadata_key)
        assert cfg.prompt_data is not None, "TrainConfig requires --prompt-data"
        self.stream = TaskStream(load_tasks(cfg.prompt_data, keys), cfg.rollout_batch_size, shuffle=cfg.rollout_shuffle, seed=cfg.seed)
        self.evals = {name: load_tasks(path, keys)[: cfg.eval_max_prompts] for name, path in cfg.eval_datasets().items()}
        self.checkpoint = find_checkpoint(cfg.load) if cfg.load else None
        self.reward_fn = make_reward_fn(cfg.rm_type, rm_url=cfg.rm_url, custom_rm_path=cfg.custom_rm_path, args=cfg)
        self.generate_fn = load_function(cfg.custom_generate_function_path, flag="--custom-generate-function-path") if cfg.custom_generate_function_path else None
        self.dynamic_filter = load_group_filter(cfg.dynamic_sampling_filter_path) if cfg.dynamic_sampling_filter_path else None
        self.partial_buffer = (
            PartialRolloutBuffer(load_buffer_filter(cfg.buffer_filter_path) if cfg.buffer_filter_path else pop_first, args=cfg)
            if cfg.partial_rollout else None
        )
        self.samples_dynamically = cfg.over_sampling_batch_size is not None or self.dynamic_filter is not None or cfg.partial_rollout
        self.logger = MetricsLogger(self.out)
        self.model_dir = resolve_model(cfg.hf_checkpoint)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.trainer = TorchTrainer(self.model_dir, cfg.trainer(), cfg.loss(), device=cfg.device)
        self.renderer = ChatRenderer(self.tokenizer, chat_template=None if cfg.apply_chat_template else PLAIN_TEMPLATE)
        self.backend: RolloutBackend | None = None  # the engines, from main() on
        self.weight_version = 0
        self.step = 0  # the step being played or trained, counted from 1 as in metrics.jsonl
        self.saved: Path | None = self.checkpoint  # the newest checkpoint of this run

    def runner(self, config: RolloutConfig, *, eval_dataset: str | None = None) -> RolloutRunner | SlimeGenerateRunner:
        """What plays the episodes (of training, or of one eval dataset): the env through the
        rollout runner, or a slime generate function."""
        assert self.backend is not None, "the engines start in main()"
        if self.generate_fn is None:
            return RolloutRunner(self.backend.policy, self.renderer, lambda: self.make_env(eval_dataset), config)
        api = urllib.parse.urlsplit(self.backend.api_url)
        args = argparse.Namespace(**{**self.cfg.to_dict(), "hf_checkpoint": str(self.model_dir), "sglang_router_ip": api.hostname,
                                     "sglang_router_port": api.port, "partial_rollout": False})
        return SlimeGenerateRunner(self.generate_fn, args, self.tokenizer, self.reward_fn, config,
                                   apply_chat_template=self.cfg.apply_chat_template, weight_version=self.weight_version, evaluation=eval_dataset is not None)

    def make_env(self, eval_dataset: str | None = None) -> Env:
        env = make(self.cfg.env, **self.cfg.env_kwargs_for(eval_dataset))
        return RewardOverride(env, self.reward_fn) if self.reward_fn else env

    async def main(self) -> dict[str, Any]:
        cfg = self.cfg
        start = await self.resume() if self.checkpoint else 0
        last: dict[str, Any] = {}
        bar = tqdm(range(start, cfg.num_rollout), desc="train", initial=start, total=cfg.num_rollout, dynamic_ncols=True)
        positions: dict[int, dict[str, int]] = {}
        pending: asyncio.Task[tuple[list[Trajectory], dict[str, Any]]] | None = None
        async with contextlib.AsyncExitStack() as stack:
            self.backend = await stack.enter_async_context(
                open_backend(cfg.backend(), self.model_dir, self.tokenizer, self.out, serve_api=self.generate_fn is not None))
            if start:
                await self.push_weights(start)
            for step in bar:
                self.step = step + 1
                if cfg.eval_interval and step % cfg.eval_interval == 0:
                    await self.logger.alog(step, await self.evaluate(step))
                if pending is None:
                    pending = asyncio.create_task(self.rollout(step, positions))
                trajectories, metrics = await pending
                pending = None
                check_trainable(trajectories, step + 1)
                if cfg.train_async:  # push the weights of the last step, then overlap the next rollout with training
                    if step > start:
                        metrics["perf/weight_sync_time_s"] = await self.push_weights(step)
                    if step + 1 < cfg.num_rollout:
                        pending = asyncio.create_task(self.rollout(step + 1, positions))
                metrics |= await self.train_step(trajectories)
                if not cfg.train_async:
                    metrics["perf/weight_sync_time_s"] = await self.push_weights(step + 1)
                metrics["perf/step_time_s"] = time.perf_counter() - metrics.pop("_started")
                metrics["weight_version"] = self.weight_version
                await self.logger.alog(step + 1, metrics)
                last = metrics
                bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}")
                await asyncio.to_thread(write_dump, self.out / "rollouts" / f"step_{step + 1:05d}.txt", trajectories, self.tokenizer)
                if (cfg.save_interval and (step + 1) % cfg.save_interval == 0) or step + 1 == cfg.num_rollout:
                    await self.save(step + 1, positions[step])
            if cfg.train_async:
                await self.push_weights(cfg.num_rollout)
            if cfg.eval_interval:
                await self.logger.alog(cfg.num_rollout, await self.evaluate(cfg.num_rollout))
        if self.partial_buffer is not None:
            await self.partial_buffer.aclose()
        aclose = getattr(self.reward_fn, "aclose", None)
        if aclose is not None:
            await aclose()
        await asyncio.to_thread(self.export_hf, self.out / "hf_model")
        self.logger.close()
        return last

    # ------------------------------------------------------------------ phases
    async def rollout(self, step: int, positions: dict[int, dict[str, int]]) -> tuple[list[Trajectory], dict[str, Any]]:
        started = time.perf_counter()
        seed = derive_seed(self.cfg.seed, step) if self.cfg.deterministic else None
        runner = self.runner(dataclasses.replace(self.cfg.rollout(), seed=seed))
        if self.samples_dynamically:
            assert isinstance(runner, RolloutRunner)
            collected = await collect_groups(
                runner, self.stream.next_batch, target=self.cfg.rollout_batch_size, over_sampling_batch_size=self.cfg.over_sampling_batch_size,
                dynamic_filter=self.dynamic_filter, filter_args=self.cfg, buffer=self.partial_buffer,
                mask_offpolicy=self.cfg.mask_offpolicy_in_partial_rollout, step=step, desc=f"rollout {step + 1}")
            trajectories, sampling_metrics = collected.trajectories, collected.metrics
        else:
            trajectories, sampling_metrics = await runner.run(self.stream.next_batch(), desc=f"rollout {step + 1}"), {}
        positions[step] = self.stream.position
        elapsed = time.perf_counter() - started
        metrics = {f"rollout/{k}": v for k, v in episode_metrics(trajectories, self.cfg.n_samples_per_prompt).items()} | sampling_metrics
        metrics |= {"perf/rollout_time_s": elapsed, "perf/rollout_tokens_per_s": summarize(trajectories, elapsed_s=elapsed)["tokens_per_s"], "_started": started}
        return trajectories, metrics

    async def train_step(self, trajectories: list[Trajectory]) -> dict[str, Any]:
        started = time.perf_counter()
        cfg = self.cfg
        sequences, samples = build_train_sequences(
            trajectories, cfg.n_samples_per_prompt, cfg.advantage_estimator,  # type: ignore[arg-type]
            std_normalization=not cfg.disable_grpo_std_normalization,
        )
        metrics = await asyncio.to_thread(self.trainer.train_rollout, sequences, samples) if samples else {}
        metrics["perf/train_time_s"] = time.perf_counter() - started
        return metrics

    async def push_weights(self, version: int) -> float:
        started = time.perf_counter()
        assert self.backend is not None, "the engines start in main()"
        await self.backend.push(self.trainer.named_weights(), version)
        self.weight_version = version
        return time.perf_counter() - started

    async def evaluate(self, step: int) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        config = dataclasses.replace(self.cfg.rollout(eval=True), seed=derive_seed(self.cfg.seed, 10**6))
        for name, tasks in self.evals.items():
            trajectories = await self.runner(config, eval_dataset=name).run(tasks, desc=f"eval {name}")
            metrics |= {f"eval/{name}/{k}": v for k, v in episode_metrics(trajectories, config.n_samples_per_prompt).items()}
            await asyncio.to_thread(write_dump, self.out / "evals" / f"{name}_step_{step:05d}.txt", trajectories, self.tokenizer)
        return metrics

    # ------------------------------------------------------------------ checkpoints and export
    async def save(self, step: int, data_position: dict[str, int]) -> None:
        """Write a checkpoint (off the event loop; no training runs meanwhile: the trainer's
        state is read live)."""
        root = self.cfg.save or self.out / "checkpoints"
        self.saved = await asyncio.to_thread(save_checkpoint, root, LoopState(step, data_position), self.trainer.state_dict())

    async def resume(self) -> int:
        """Load the checkpoint ``--load`` names (checked before the model loaded); the engines
        get its weights once they run."""
        assert self.checkpoint is not None
        state, trainer_state = await asyncio.to_thread(read_checkpoint, self.checkpoint)
        self.trainer.load_state_dict(trainer_state)
        self.stream.seek(state.data_position)
        tqdm.write(f"[agentrl] resumed from {self.checkpoint} at step {state.step}")
        return state.step

    def export_hf(self, path: Path) -> None:
        """The trained model and its tokenizer as a Hugging Face directory (blocking)."""
        self.trainer.save_hf(path)
        self.tokenizer.save_pretrained(path)

    def resume_hint(self) -> str:
        """Where an interrupted run can go on from."""
        if self.saved is None:
            return "no checkpoint was saved yet (see --save-interval)"
        return f"resume with --load {self.saved.parent} (its newest checkpoint: {self.saved.name})"


def check_trainable(trajectories: Sequence[Trajectory], step: int) -> None:
    """Refuse a rollout step in which no episode can be trained on (every one failed).

    Raises:
        TrainingError: with the first failed episode's termination, error and traceback.
    """
    if any(not t.excluded for t in trajectories):
        return
    if not trajectories:
        raise TrainingError(f"rollout step {step} played no episode: nothing to train on")
    first = trajectories[0]
    counts = ", ".join(f"{n} {k}" for k, n in Counter(t.termination.value for t in trajectories).items())
    raise TrainingError(
        f"rollout step {step}: none of its {len(trajectories)} episodes can be trained on ({counts}); nothing was saved.\n"
        f"The first (task {first.task_index}, sample {first.sample_index}) ended as {first.termination.value}: {first.error}")


def episode_metrics(trajectories: Sequence[Trajectory], group_size: int) -> dict[str, float]:
    """Reward, length, termination and env-info statistics of a batch of episodes.

    Excluded episodes (env errors, aborts) count in ``excluded`` and ``termination/*`` only.
    Numeric or boolean values of the env's final ``info`` are averaged as ``info/<key>``.
    """
    kept = [t for t in trajectories if not t.excluded]
    rewards = [t.reward for t in kept]
    metrics: dict[str, float] = {
        "reward_mean": statistics.fmean(rewards) if rewards else float("nan"),
        "reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        "response_len_mean": statistics.fmean(t.metrics["sampled_tokens"] for t in trajectories) if trajectories else 0.0,
        "turns_mean": statistics.fmean(t.metrics["turns"] for t in trajectories) if trajectories else 0.0,
        "excluded": len(trajectories) - len(kept),
        "prefix_mismatches": sum(t.metrics["prefix_mismatches"] for t in trajectories),
    }
    groups = [trajectories[i : i + group_size] for i in range(0, len(trajectories), group_size)]
    metrics["zero_std_group_frac"] = sum(len({t.reward for t in g}) == 1 for g in groups) / max(len(groups), 1)
    metrics |= {f"termination/{k}": v for k, v in Counter(t.termination.value for t in trajectories).items()}
    info_values: dict[str, list[float]] = {}
    for t in kept:
        for key, value in t.info.items():
            if isinstance(value, (bool, int, float)):
                info_values.setdefault(key, []).append(float(value))
    metrics |= {f"info/{k}": statistics.fmean(v) for k, v in info_values.items()}
    return metrics

