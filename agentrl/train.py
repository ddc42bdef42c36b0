"""``agentrl train``: the training loop, read top to bottom.

Each step: tasks -> episodes on the engines -> trajectories -> advantages, dealt to the trainer
ranks -> optimizer steps -> weights pushed to the engines (version + 1). Around it: evaluation
every ``--eval-interval`` steps, checkpoints every ``--save-interval`` steps, metrics, dumps and
plots in ``--output-dir``. With ``--train-async`` the next rollout runs while this step trains
(its samples are one weight version behind).

Where things run is the launcher's business (:mod:`agentrl.launch`): everything in this process
(the default), or trainer ranks, engines and the rollout manager as Ray actors (``--launcher
ray``, or when run as a Ray job). The loop reads the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import AutoTokenizer

from agentrl.checkpoint import LoopState, find_checkpoint
from agentrl.compat.slime_wandb import metric_sinks
from agentrl.config import TrainConfig
from agentrl.errors import ConfigError, TrainingError
from agentrl.launch.base import Rollouts, Trainers
from agentrl.metrics import MetricsLogger
from agentrl.models.resolve import resolve_model
from agentrl.rollout import Trajectory, summarize
from agentrl.rollout.dump import write_dump
from agentrl.rollout.manager import RolloutResult
from agentrl.rollout.trajectory import check_trainable, describe_excluded
from agentrl.shutdown import Interrupted, run_until_signalled
from agentrl.trainers.batching import build_train_sequences
from agentrl.trainers.dp_split import split_for_ranks

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run the whole training job; returns the last logged metrics.

    Raises:
        TrainingError: a rollout step left no episode to train on (the message holds the first
            failed episode's error and traceback); nothing is saved then. Or, once training has
            finished and saved, an evaluation lost every one of its episodes.
        Interrupted: SIGINT or SIGTERM stopped the run (launched engines are stopped first);
            the message says where to resume from.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(f"agentrl train runs one process, and found WORLD_SIZE={world} (torchrun?): run it as one process; "
                          "for several trainer ranks use --launcher ray (--actor-num-nodes, --actor-num-gpus-per-node)")
    run = _Run(cfg)
    try:
        return asyncio.run(run_until_signalled(run.main()))
    except Interrupted as e:
        raise Interrupted(f"{e} during step {run.step}; {run.resume_hint()}", e.signum) from None


@contextlib.asynccontextmanager
async def launch(cfg: TrainConfig, model_dir: Path, run_dir: Path) -> AsyncIterator[tuple[Trainers, Rollouts]]:
    """The trainer ranks and the rollout side, started where ``--launcher`` says."""
    if cfg.launcher == "ray":
        from agentrl.launch.ray_launcher import launch_ray

        async with launch_ray(cfg, model_dir, run_dir) as launched:
            yield launched
    else:
        from agentrl.launch.local import launch_local

        async with launch_local(cfg, model_dir, run_dir) as local:
            yield local


class _Run:
    """One run: its output, its progress, and the loop over the launched trainers and rollouts."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        self.checkpoint = find_checkpoint(cfg.load) if cfg.load else None  # a bad --load fails before any model loads
        self.model_dir = resolve_model(cfg.hf_checkpoint)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.logger = MetricsLogger(self.out, sinks=metric_sinks(cfg))
        self.step = 0  # the step being played or trained, counted from 1 as in metrics.jsonl
        self.weight_version = 0  # what the engines serve
        self.saved: Path | None = self.checkpoint  # the newest checkpoint of this run
        self.lost_evals: list[str] = []  # evaluations that lost every episode: the run fails once trained and saved

    async def main(self) -> dict[str, Any]:
        cfg = self.cfg
        async with launch(cfg, self.model_dir, self.out) as (trainers, rollouts):
            self.trainers, self.rollouts = trainers, rollouts
            start = await self.resume() if self.checkpoint else 0
            if start:
                await self.push_weights(start)
            last = await self.loop(start)
            if cfg.train_async:
                await self.push_weights(cfg.num_rollout)
            if cfg.eval_interval:
                await self.logger.alog(cfg.num_rollout, await self.evaluate(cfg.num_rollout))
            await self.trainers.export_hf(self.out / "hf_model")
        await asyncio.to_thread(self.tokenizer.save_pretrained, self.out / "hf_model")
        self.logger.close()
        if self.lost_evals:
            raise TrainingError(f"the run trained and saved {self.out / 'hf_model'}, but these evaluations lost every episode, so "
                                f"measured nothing: {'; '.join(self.lost_evals)}")
        return last

    async def loop(self, start: int) -> dict[str, Any]:
        """Steps ``start .. num_rollout - 1``; returns the last step's metrics."""
        cfg, last = self.cfg, {}
        bar = tqdm(range(start, cfg.num_rollout), desc="train", initial=start, total=cfg.num_rollout, dynamic_ncols=True)
        pending: asyncio.Task[RolloutResult] | None = None
        try:
            for step in bar:
                self.step = step + 1
                if cfg.eval_interval and step % cfg.eval_interval == 0 and not (step == 0 and cfg.skip_eval_before_train):
                    await self.logger.alog(step, await self.evaluate(step))
                started = time.perf_counter()
                result = await (pending or self.rollouts.rollout(step))
                pending = None
                check_trainable(result.trajectories, step + 1)
                metrics = rollout_metrics(result, cfg.n_samples_per_prompt)
                if cfg.train_async:  # push the weights of the last step, then overlap the next rollout with training
                    if step > start:
                        metrics["perf/weight_sync_time_s"] = await self.push_weights(step)
                    if step + 1 < cfg.num_rollout:
                        pending = asyncio.create_task(self.rollouts.rollout(step + 1))
                metrics |= await self.train_step(result.trajectories)
                if not cfg.train_async:
                    metrics["perf/weight_sync_time_s"] = await self.push_weights(step + 1)
                metrics["perf/step_time_s"] = time.perf_counter() - started
                metrics["weight_version"] = self.weight_version
                await self.logger.alog(step + 1, metrics)
                last = metrics
                bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}")
                await asyncio.to_thread(write_dump, self.out / "rollouts" / f"step_{step + 1:05d}.txt", result.trajectories, self.tokenizer)
                if (cfg.save_interval and (step + 1) % cfg.save_interval == 0) or step + 1 == cfg.num_rollout:
                    await self.save(step + 1, result.data_position)
        finally:  # an error or a cancellation mid-step must not leave the next step's rollout playing on
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
        return last

    # ------------------------------------------------------------------ phases
    async def train_step(self, trajectories: list[Trajectory]) -> dict[str, Any]:
        """Advantages over whole groups, then the optimizer steps, each rank on its share."""
        started = time.perf_counter()
        cfg = self.cfg
        sequences, _ = build_train_sequences(
            trajectories, cfg.n_samples_per_prompt, cfg.advantage_estimator,  # type: ignore[arg-type]
            std_normalization=not cfg.disable_grpo_std_normalization,
        )
        metrics = await self.trainers.train(split_for_ranks(sequences, self.trainers.world_size))
        metrics["perf/train_time_s"] = time.perf_counter() - started
        return metrics

    async def push_weights(self, version: int) -> float:
        """Every engine loads the trainer's weights as ``version``; the seconds it took."""
        started = time.perf_counter()
        await self.trainers.push_weights(version)
        await self.rollouts.note_weight_version(version)
        self.weight_version = version
        return time.perf_counter() - started

    async def evaluate(self, step: int) -> dict[str, Any]:
        """Play the eval datasets. Episodes that failed (an engine or env error) are left out of
        the means and said loudly, with the first one's error; an evaluation that lost every
        episode fails the run once training is done (stopping here would pre-empt a training
        step's own error)."""
        metrics: dict[str, Any] = {}
        for name, trajectories in (await self.rollouts.evaluate()).items():
            if any(t.excluded for t in trajectories):
                log.warning("evaluation %r at step %d: its metrics average only the episodes that finished; %s", name, step,
                            describe_excluded(trajectories))
            if trajectories and all(t.excluded for t in trajectories):
                self.lost_evals.append(f"{name!r} at step {step} ({describe_excluded(trajectories)})")
            metrics |= {f"eval/{name}/{k}": v for k, v in episode_metrics(trajectories, self.cfg.n_samples_per_eval_prompt).items()}
            await asyncio.to_thread(write_dump, self.out / "evals" / f"{name}_step_{step:05d}.txt", trajectories, self.tokenizer)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    async def save(self, step: int, data_position: dict[str, int]) -> None:
        """Write a checkpoint (no training runs meanwhile: the trainer's state is read live)."""
        self.saved = await self.trainers.save(Path(self.cfg.save or self.out / "checkpoints"), LoopState(step, data_position))

    async def resume(self) -> int:
        """Restore the checkpoint ``--load`` names (checked before the model loaded); the engines
        get its weights before the first step."""
        assert self.checkpoint is not None
        state = await self.trainers.load(self.checkpoint)
        await self.rollouts.seek(state.data_position)
        tqdm.write(f"[agentrl] resumed from {self.checkpoint} at step {state.step}")
        return state.step

    def resume_hint(self) -> str:
        """Where an interrupted run can go on from."""
        if self.saved is None:
            return "no checkpoint was saved yet (see --save-interval)"
        return f"resume with --load {self.saved.parent} (its newest checkpoint: {self.saved.name})"


def rollout_metrics(result: RolloutResult, group_size: int) -> dict[str, Any]:
    """The ``rollout/*`` and ``perf/rollout_*`` metrics of one step's episodes."""
    metrics: dict[str, Any] = {f"rollout/{k}": v for k, v in episode_metrics(result.trajectories, group_size).items()} | result.metrics
    tokens_per_s = summarize(result.trajectories, elapsed_s=result.seconds)["tokens_per_s"]
    return metrics | {"perf/rollout_time_s": result.seconds, "perf/rollout_tokens_per_s": tokens_per_s}


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



if __name__ == "__main__":  # python -m agentrl.train ... (e.g. as a `ray job submit` entrypoint) is agentrl train ...
    import sys

    from agentrl.cli import main

    sys.exit(main(["train", *sys.argv[1:]]))
