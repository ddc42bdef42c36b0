"""The rollout side of a training run: tasks, envs, rewards, the runner and the engines.

The training loop (:mod:`agentrl.train`) asks a :class:`RolloutManager` for one step's episodes
(:meth:`~RolloutManager.rollout`) and for evaluation episodes (:meth:`~RolloutManager.evaluate`);
it never touches an env or an engine. It is the loop's :class:`~agentrl.launch.base.Rollouts` in
the loop's process (the local launcher), and the body of a CPU-only Ray actor (the Ray launcher,
:mod:`agentrl.launch.ray_actors`), where it owns sglang-router and the engine actors.

Construction reads everything that can be wrong in the user's input (task files, reward and
plug-in paths) and loads no model, so a bad flag fails in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import AutoTokenizer

from agentrl.compat.slime_data import drop_long_prompts, eval_task_keys, prompt_token_counter
from agentrl.compat.slime_generate import SlimeGenerateRunner
from agentrl.data import TaskKeys, TaskStream, load_tasks
from agentrl.engines.backend import EngineFactory, RestartHook, RolloutBackend, open_backend
from agentrl.engines.weight_sync import NamedTensors
from agentrl.envs import Env, make
from agentrl.plugins import load_function
from agentrl.rewards.hub import RewardOverride, make_reward_fn
from agentrl.rollout.conversation import ChatRenderer
from agentrl.rollout.filters import load_group_filter
from agentrl.rollout.partial import PartialRolloutBuffer, load_buffer_filter, pop_first
from agentrl.rollout.runner import RolloutConfig, RolloutRunner, derive_seed
from agentrl.rollout.sampling import collect_groups
from agentrl.rollout.trajectory import Trajectory

if TYPE_CHECKING:
    from agentrl.config import TrainConfig

PLAIN_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
"""Used with ``--no-apply-chat-template``: the prompt text as it is."""

EVAL_SEED = 10**6
"""Evaluation samples with seeds derived from (``--seed``, this), the same at every step."""


@dataclass(frozen=True)
class RolloutResult:
    """One training step's episodes.

    Attributes:
        trajectories: ordered by (task, sample): runs of ``n_samples_per_prompt`` are the groups.
        metrics: what sampling itself counted (dynamic-sampling drops, partial-rollout buffer),
            under ``/``-separated names; empty for plain rollouts.
        data_position: where the task stream stands after this step (saved in checkpoints).
        seconds: wall time of the rollout.
    """

    trajectories: list[Trajectory]
    metrics: dict[str, float]
    data_position: dict[str, int]
    seconds: float


class RolloutManager:
    """See the module docstring.

    Args:
        cfg: the run's config (its rollout, data, reward and engine parts are used).
        model_dir: the resolved model directory (its tokenizer and chat template).
        run_dir: the run's output directory (engine logs and weight files go under it).
        engine_factory: builds each launched engine (the Ray launcher places them on their
            bundles); ``None``: engines are local processes.
        restart_hook: set when the weights live in another process (a Ray trainer rank, which
            pushes through :attr:`RolloutBackend.fleet`): gives a relaunched engine its weights.
    """

    def __init__(self, cfg: TrainConfig, model_dir: Path, run_dir: Path, *, engine_factory: EngineFactory | None = None,
                 restart_hook: RestartHook | None = None) -> None:
        self.cfg, self.model_dir, self.run_dir = cfg, model_dir, run_dir
        self.engine_factory, self.restart_hook = engine_factory, restart_hook
        keys = TaskKeys(cfg.input_key, cfg.label_key, cfg.metadata_key)
        assert cfg.prompt_data is not None, "TrainConfig requires --prompt-data"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        fits = prompt_token_counter(self.tokenizer, apply_chat_template=cfg.apply_chat_template)
        tasks = drop_long_prompts(load_tasks(cfg.prompt_data, keys), cfg.rollout_max_prompt_len, fits, where=cfg.prompt_data)
        self.stream = TaskStream(tasks, cfg.rollout_batch_size, shuffle=cfg.rollout_shuffle, seed=cfg.seed)
        eval_keys = eval_task_keys(cfg)
        self.evals = {name: load_tasks(path, eval_keys)[: cfg.eval_max_prompts] for name, path in cfg.eval_datasets().items()}
        self.reward_fn = make_reward_fn(cfg.rm_type, rm_url=cfg.rm_url, custom_rm_path=cfg.custom_rm_path, args=cfg)
        self.generate_fn = load_function(cfg.custom_generate_function_path, flag="--custom-generate-function-path") if cfg.custom_generate_function_path else None
        self.dynamic_filter = load_group_filter(cfg.dynamic_sampling_filter_path) if cfg.dynamic_sampling_filter_path else None
        buffer_filter = load_buffer_filter(cfg.buffer_filter_path) if cfg.buffer_filter_path else pop_first
        self.partial_buffer = PartialRolloutBuffer(buffer_filter, args=cfg) if cfg.partial_rollout else None
        self.renderer = ChatRenderer(self.tokenizer, chat_template=None if cfg.apply_chat_template else PLAIN_TEMPLATE)
        self.weight_version = 0
        self.backend: RolloutBackend | None = None
        self._stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the engines (the embedded one, or launched and attached ones behind the router)."""
        self.backend = await self._stack.enter_async_context(open_backend(
            self.cfg.backend(), self.model_dir, self.tokenizer, self.run_dir, serve_api=self.generate_fn is not None,
            engine_factory=self.engine_factory, restart_hook=self.restart_hook))

    async def aclose(self) -> None:
        """Stop the engines and close what the rollouts opened; safe to call twice."""
        try:
            if self.partial_buffer is not None:
                await self.partial_buffer.aclose()
            aclose: Callable[[], Awaitable[None]] | None = getattr(self.reward_fn, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            await self._stack.aclose()
            self.backend = None

    # ------------------------------------------------------------------ episodes
    async def rollout(self, step: int) -> RolloutResult:
        """The episodes of training step ``step`` (counted from 0), on the next tasks.

        Raises:
            FleetError: the engines failed (before or while it played).
        """
        self._raise_if_engines_failed()
        started = time.perf_counter()
        seed = derive_seed(self.cfg.seed, step) if self.cfg.deterministic else None
        runner = self.runner(dataclasses.replace(self.cfg.rollout(), seed=seed))
        metrics: dict[str, float] = {}
        if self.cfg.over_sampling_batch_size is not None or self.dynamic_filter is not None or self.partial_buffer is not None:
            assert isinstance(runner, RolloutRunner), "the config refuses dynamic sampling with a generate function"
            collected = await collect_groups(
                runner, self.stream.next_batch, target=self.cfg.rollout_batch_size, over_sampling_batch_size=self.cfg.over_sampling_batch_size,
                dynamic_filter=self.dynamic_filter, filter_args=self.cfg, buffer=self.partial_buffer,
                mask_offpolicy=self.cfg.mask_offpolicy_in_partial_rollout, step=step, desc=f"rollout {step + 1}")
            trajectories, metrics = collected.trajectories, collected.metrics
        else:
            trajectories = await runner.run(self.stream.next_batch(), desc=f"rollout {step + 1}")
        self._raise_if_engines_failed()  # episodes the failure aborted say less than the failure itself
        return RolloutResult(trajectories, metrics, self.stream.position, time.perf_counter() - started)

    async def evaluate(self) -> dict[str, list[Trajectory]]:
        """The episodes of every eval dataset, with the same seeds at every call."""
        config = dataclasses.replace(self.cfg.rollout(eval=True), seed=derive_seed(self.cfg.seed, EVAL_SEED))
        self._raise_if_engines_failed()
        played = {name: await self.runner(config, eval_dataset=name).run(tasks, desc=f"eval {name}") for name, tasks in self.evals.items()}
        self._raise_if_engines_failed()
        return played

    def _raise_if_engines_failed(self) -> None:
        assert self.backend is not None, "start() the manager first"
        self.backend.raise_if_failed()

    def runner(self, config: RolloutConfig, *, eval_dataset: str | None = None) -> RolloutRunner | SlimeGenerateRunner:
        """What plays the episodes (of training, or of one eval dataset): the env through the
        rollout runner, or a slime generate function against the engines' SGLang API."""
        assert self.backend is not None, "start() the manager first"
        if self.generate_fn is None:
            return RolloutRunner(self.backend.policy, self.renderer, lambda: self.make_env(eval_dataset), config)
        assert self.backend.api_url is not None
        api = urllib.parse.urlsplit(self.backend.api_url)
        args = argparse.Namespace(**{**self.cfg.to_dict(), "hf_checkpoint": str(self.model_dir), "sglang_router_ip": api.hostname,
                                     "sglang_router_port": api.port, "partial_rollout": False})
        return SlimeGenerateRunner(self.generate_fn, args, self.tokenizer, self.reward_fn, config,
                                   apply_chat_template=self.cfg.apply_chat_template, weight_version=self.weight_version,
                                   evaluation=eval_dataset is not None)

    def make_env(self, eval_dataset: str | None = None) -> Env:
        """A fresh env for one episode (with the reward override of ``--rm-type`` / ``--custom-rm-path``)."""
        env = make(self.cfg.env, **self.cfg.env_kwargs_for(eval_dataset))
        return RewardOverride(env, self.reward_fn) if self.reward_fn else env

    # ------------------------------------------------------------------ data and weights
    async def seek(self, position: dict[str, int]) -> None:
        """Continue the task stream from a checkpoint's ``position``."""
        self.stream.seek(position)

    async def push(self, named_tensors: NamedTensors, weight_version: int) -> None:
        """Load new weights into every engine (the local launcher: the trainer is in this process)."""
        self._raise_if_engines_failed()
        assert self.backend is not None
        await self.backend.push(named_tensors, weight_version)
        self.weight_version = weight_version

    async def note_weight_version(self, weight_version: int) -> None:
        """The engines now serve ``weight_version`` (pushed by a trainer in another process)."""
        self.weight_version = weight_version
