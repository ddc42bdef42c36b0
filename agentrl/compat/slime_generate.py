"""Episodes played by a slime ``--custom-generate-function-path`` function.

slime's contract (``slime/rollout/sglang_rollout.py`` ``generate_and_rm`` at slime 624b824):
``async def generate(args, sample, sampling_params) -> Sample | list[Sample]`` (optionally with an
``evaluation`` keyword). The function posts SGLang ``/generate`` requests to
``http://{args.sglang_router_ip}:{args.sglang_router_port}`` itself, runs its own tool loop, and
fills ``sample.tokens`` (prompt + response ids), ``response_length``, ``response``, ``loss_mask``
and ``rollout_log_probs`` (one per response token), ``status`` and, optionally, ``reward``.
agentrl points ``args`` (slime's namespace: :mod:`agentrl.compat.slime_args`) at an
SGLang-compatible server over its own engine and trains on exactly what the function returned:

* **Token-exact.** The trained sequence is ``sample.tokens``, split at ``response_length``; its
  loss mask and rollout log-probs are the sample's own (log-probs zeroed where masked). A sample
  with ``remove_sample`` set keeps its place in its group's baseline with every mask entry 0.
* **The same object.** The reward function (``--custom-rm-path`` or ``--rm-type``) scores the
  ``Sample`` the generate function returned, with every attribute it set; a sample whose
  ``reward`` is already set is not scored again. The raw reward stays on ``sample.reward``; the
  number trained on is read with ``--reward-key`` (``--eval-reward-key`` in evaluation); the
  other numbers of a dict reward become the trajectory's ``info`` (metrics ``rollout/info/*``).
* **list[Sample].** Several trained sequences from one rollout (slime's fan-out, siblings sharing
  ``rollout_id``) form one trajectory: one segment per sample, its return the sum of the
  samples' rewards (slime's docs: give each of K segments ``reward / K``), one member of its
  GRPO group, averaged once in a per-sample loss (slime's per-rollout reduction). Samples left
  unscored are scored together: a ``--custom-rm-path`` function gets the list (slime's batch
  call) and returns one reward per sample.
* **Statuses** (members or their strings): ``completed`` and ``pending`` end as ``done``,
  ``truncated`` as ``length`` (both trained, keeping their reward); ``aborted`` as ``abort`` and
  ``failed`` as ``env_error`` (left out of the loss and of the group's baseline; slime leaves
  ``failed`` to the user, agentrl counts it as an infrastructure failure). For a list: aborted,
  then failed, then the last sample's status.
* **Failures.** A function that raises or returns something inconsistent ends its own episode as
  ``env_error``, with the error and its traceback in ``Trajectory.error`` (which the training
  loop shows when a whole step failed); the batch goes on.
"""

from __future__ import annotations

import asyncio
import inspect
import traceback
from argparse import Namespace
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from agentrl.compat.slime_args import slime_namespace
from agentrl.compat.slime_types import Sample, SampleStatus
from agentrl.envs.core import Task
from agentrl.errors import ConfigError
from agentrl.rewards.slime_rm import reward_value
from agentrl.rewards.types import RewardFn, RewardInput
from agentrl.rollout.runner import RolloutConfig, derive_seed, play_groups
from agentrl.rollout.trajectory import Segment, Termination, Trajectory

TERMINATIONS = {
    SampleStatus.PENDING: Termination.DONE,
    SampleStatus.COMPLETED: Termination.DONE,
    SampleStatus.TRUNCATED: Termination.LENGTH,
    SampleStatus.ABORTED: Termination.ABORT,
    SampleStatus.FAILED: Termination.ENV_ERROR,
}


class SlimeGenerateRunner:
    """Plays every task's group with ``generate_fn``; the same ``run`` contract as
    :class:`~agentrl.rollout.RolloutRunner`.

    Args:
        generate_fn: the slime generate function.
        args: this run's settings as a namespace (a ``TrainConfig.to_dict()`` plus the server's
            ``sglang_router_ip``/``sglang_router_port`` and the resolved ``hf_checkpoint``);
            the function gets slime's namespace built from them.
        tokenizer: renders the chat prompt when ``apply_chat_template``.
        reward_fn: scores samples the function leaves unscored (a
            :class:`~agentrl.rewards.hub.SlimeReward` scores the ``Sample`` itself);
            ``None`` requires the function to score them.
        config: sampling settings, concurrency and seed.
        weight_version: the engine's weight version, recorded when a sample carries none.
        evaluation: passed to functions that take an ``evaluation`` keyword; selects
            ``--eval-reward-key``.
    """

    def __init__(
        self, generate_fn: Callable[..., Any], args: Namespace, tokenizer: PreTrainedTokenizerBase, reward_fn: RewardFn | None,
        config: RolloutConfig, *, apply_chat_template: bool = True, weight_version: int = 0, evaluation: bool = False,
    ) -> None:
        if not inspect.iscoroutinefunction(generate_fn):
            raise ConfigError("--custom-generate-function-path must name an async function (args, sample, sampling_params) -> Sample, as in slime")
        self.generate_fn, self.tokenizer, self.reward_fn = generate_fn, tokenizer, reward_fn
        self.args = slime_namespace(vars(args))
        self.config, self.apply_chat_template = config, apply_chat_template
        self.weight_version, self.evaluation = weight_version, evaluation
        self.reward_key = self.args.eval_reward_key if evaluation else self.args.reward_key
        self._takes_evaluation = "evaluation" in inspect.signature(generate_fn).parameters

    async def run(self, tasks: Iterable[Task], *, progress: bool = True, desc: str = "rollout") -> list[Trajectory]:
        """All episodes of ``tasks`` (``n_samples_per_prompt`` each), ordered by (task, sample)."""
        return await play_groups(tasks, self.config, self.episode, progress=progress, desc=desc)

    async def episode(self, task: Task, sample_index: int) -> Trajectory:
        """One rollout of ``task``: the function's samples, scored, as one trajectory."""
        sample = self._new_sample(task, sample_index)
        trajectory = Trajectory(task.index, sample_index, [], [_user_message(sample.prompt)], [0.0], Termination.ENV_ERROR,
                                [self.weight_version], label=task.label,
                                metrics={"turns": 0, "segments": 0, "prefix_mismatches": 0, "sampled_tokens": 0, "response_tokens": 0})
        limit = asyncio.timeout(self.config.episode_timeout_s)
        try:
            kwargs = {"evaluation": self.evaluation} if self._takes_evaluation else {}
            async with limit:
                samples = _as_samples(await self.generate_fn(self.args, sample, self._sampling_params(task, sample_index), **kwargs))
                termination = _termination(samples)
                segments = [_segment(s, use_tis=bool(self.args.use_tis)) for s in samples]
                rewards = [0.0] * len(samples) if termination.excluded else await self._rewards(samples)
        except Exception as e:  # the function's failure ends its own episode, not the batch
            if isinstance(e, TimeoutError) and limit.expired():
                trajectory.termination, trajectory.error = Termination.TIMEOUT, f"episode exceeded episode_timeout_s={self.config.episode_timeout_s}"
            else:
                trajectory.error = "".join(traceback.format_exception(e)).rstrip()
            return trajectory
        _fill(trajectory, samples, segments, rewards, termination, self.weight_version)
        return trajectory

    def _new_sample(self, task: Task, sample_index: int) -> Sample:
        """The sample slime's data source would hand the function: the rendered prompt, label and
        metadata; ``group_index`` the task's, ``index`` unique within the rollout."""
        n = self.config.n_samples_per_prompt
        return Sample(prompt=self._prompt(task), label=task.label, metadata=dict(task.metadata or {}), group_index=task.index,
                      index=task.index * n + sample_index, status=SampleStatus.PENDING, session_id=f"{task.index}-{sample_index}")

    def _prompt(self, task: Task) -> str | list[dict[str, Any]]:
        """With ``--apply-chat-template`` the rendered text (generation prompt added), else the
        row's input as it is, as slime's dataset does."""
        if not self.apply_chat_template:
            return task.prompt if isinstance(task.prompt, str) else [dict(m) for m in task.prompt]
        messages = [{"role": "user", "content": task.prompt}] if isinstance(task.prompt, str) else list(task.prompt)
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def _sampling_params(self, task: Task, sample_index: int) -> dict[str, Any]:
        """slime's sampling parameters (``GenerateState.sampling_params``), from this run's config."""
        c = self.config
        params: dict[str, Any] = {
            "temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "max_new_tokens": c.max_new_tokens,
            "stop": list(c.stop) or None, "stop_token_ids": list(c.stop_token_ids) or None,
            "skip_special_tokens": bool(self.args.rollout_skip_special_tokens), "no_stop_trim": True, "spaces_between_special_tokens": False,
        }
        if c.seed is not None:
            params["sampling_seed"] = derive_seed(c.seed, task.index, sample_index)
        return params

    async def _rewards(self, samples: list[Sample]) -> list[float]:
        """Score the samples without a reward (all together), then read each one's number."""
        unscored = [s for s in samples if s.reward is None]
        if unscored:
            if self.reward_fn is None:
                raise ConfigError("the generate function left sample.reward unset: give --rm-type or --custom-rm-path")
            for s, raw in zip(unscored, await self._score(unscored)):
                s.reward = raw
        return [reward_value(s.reward, self.reward_key, source="the reward of the generate function's sample") for s in samples]

    async def _score(self, samples: list[Sample]) -> list[Any]:
        score_sample = getattr(self.reward_fn, "score_sample", None)
        if score_sample is None:  # one of agentrl's own reward functions: it reads text
            assert self.reward_fn is not None
            return list(await asyncio.gather(*(self.reward_fn(_reward_input(s)) for s in samples)))
        if len(samples) > 1 and getattr(self.reward_fn, "batch_for_lists", False):
            return _checked_batch(await self.reward_fn.score_batch(samples, self.args), len(samples))  # type: ignore[union-attr]
        return list(await asyncio.gather(*(score_sample(s, self.args) for s in samples)))


def _as_samples(result: Any) -> list[Sample]:
    if isinstance(result, Sample):
        return [result]
    if isinstance(result, list) and result and all(isinstance(s, Sample) for s in result):
        ids = {s.rollout_id for s in result if s.rollout_id is not None}
        if len(ids) > 1:
            raise ValueError(f"the samples of one rollout must share rollout_id (slime's contract), got {sorted(ids)}")
        return result
    raise TypeError(f"the generate function returned {type(result).__name__}{' (empty)' if result == [] else ''}, not a Sample or a non-empty list of Samples")


def _termination(samples: Sequence[Sample]) -> Termination:
    statuses = [SampleStatus.parse(s.status) for s in samples]
    for status in (SampleStatus.ABORTED, SampleStatus.FAILED):
        if status in statuses:
            return TERMINATIONS[status]
    return TERMINATIONS[statuses[-1]]


def _segment(sample: Sample, *, use_tis: bool) -> Segment:
    """The trainable sequence of a returned sample, checked token by token for consistency."""
    n = sample.response_length
    if not 0 < n < len(sample.tokens):
        raise ValueError(f"sample.response_length {n} does not fit sample.tokens ({len(sample.tokens)} ids, at least one of them prompt)")
    mask = [1] * n if sample.loss_mask is None else list(sample.loss_mask)
    if sample.rollout_log_probs is None and use_tis:
        raise ValueError("--use-tis needs sample.rollout_log_probs (the engine's log-prob of each response token)")
    logprobs = [0.0] * n if sample.rollout_log_probs is None else [float(lp) for lp in sample.rollout_log_probs]
    if len(mask) != n or len(logprobs) != n:
        raise ValueError(f"sample.loss_mask ({len(mask)}) and sample.rollout_log_probs ({len(logprobs)}) must have response_length ({n}) entries")
    if any(m not in (0, 1) for m in mask):
        raise ValueError(f"sample.loss_mask must hold only 0 and 1, got {sorted(set(mask) - {0, 1})[:5]}")
    if sample.remove_sample:
        mask = [0] * n
    return Segment([int(t) for t in sample.tokens[:-n]], [int(t) for t in sample.tokens[-n:]], mask, [lp if m else 0.0 for lp, m in zip(logprobs, mask)])


def _fill(trajectory: Trajectory, samples: list[Sample], segments: list[Segment], rewards: list[float], termination: Termination, version: int) -> None:
    versions = [int(v) for s in samples for v in s.weight_versions if str(v).isdigit()]
    trajectory.segments, trajectory.rewards, trajectory.termination = segments, rewards, termination
    trajectory.weight_versions = versions or [version]
    trajectory.messages += [{"role": "assistant", "content": s.response} for s in samples]
    trajectory.metrics |= {"turns": max(len(versions), 1), "segments": len(segments), "sampled_tokens": sum(sum(g.loss_mask) for g in segments),
                           "response_tokens": sum(len(g.response_ids) for g in segments)}
    raw = samples[-1].reward  # a dict reward's other numbers (dapo's acc) are averaged as rollout/info/<key>
    if isinstance(raw, dict):
        trajectory.info = {str(k): v for k, v in raw.items() if isinstance(v, (bool, int, float))}


def _checked_batch(rewards: Any, n: int) -> list[Any]:
    if not isinstance(rewards, (list, tuple)) or len(rewards) != n:
        raise TypeError(f"--custom-rm-path got {n} samples (a list[Sample] return) and must return {n} rewards, got {rewards!r:.200}")
    return list(rewards)


def _prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


def _user_message(prompt: str | list[dict[str, Any]]) -> dict[str, Any]:
    return {"role": "user", "content": _prompt_text(prompt)}


def _reward_input(sample: Sample) -> RewardInput:
    return RewardInput(_prompt_text(sample.prompt), sample.response, sample.label, dict(sample.metadata))
