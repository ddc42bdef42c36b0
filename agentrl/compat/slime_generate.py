"""Episodes played by a slime ``--custom-generate-function-path`` function.

slime's contract: ``async def generate(args, sample, sampling_params) -> Sample`` (optionally
with an ``evaluation`` keyword). The function posts SGLang ``/generate`` requests to
``http://{args.sglang_router_ip}:{args.sglang_router_port}`` itself, runs its own tool loop, and
fills ``sample.tokens`` (prompt + response ids), ``sample.response_length``, ``sample.response``,
``sample.loss_mask`` and ``sample.rollout_log_probs`` (one per response token), ``sample.status``
and, optionally, ``sample.reward``. agentrl points ``args`` at an SGLang-compatible server over
its own engine (:class:`agentrl.serving.SGLangServer`), so such functions run unchanged, and
turns each returned ``Sample`` into a :class:`~agentrl.rollout.Trajectory`:

* status ``completed`` ends as ``done``, ``truncated`` as ``length`` (both keep their reward);
  ``aborted`` as ``abort`` and ``failed`` as ``env_error`` (both left out of the loss).
* A function that raises, or returns inconsistent lengths, ends that episode as ``env_error``
  with the reason; the batch goes on.
* ``sample.reward`` left ``None`` is scored with the run's reward function (``--rm-type`` /
  ``--custom-rm-path``).

Not supported: functions returning several samples for one prompt (slime's fan-out form).
"""

from __future__ import annotations

import inspect
from argparse import Namespace
from collections.abc import Callable, Iterable
from typing import Any

from transformers import PreTrainedTokenizerBase

from agentrl.compat.slime import Sample
from agentrl.envs.core import Task
from agentrl.errors import ConfigError
from agentrl.rewards.types import RewardFn, RewardInput
from agentrl.rollout.runner import RolloutConfig, derive_seed, play_groups
from agentrl.rollout.trajectory import Segment, Termination, Trajectory

TERMINATIONS = {
    Sample.Status.COMPLETED: Termination.DONE,
    Sample.Status.TRUNCATED: Termination.LENGTH,
    Sample.Status.ABORTED: Termination.ABORT,
    Sample.Status.FAILED: Termination.ENV_ERROR,
}


class SlimeGenerateRunner:
    """Plays every task's group with ``generate_fn``; the same ``run`` contract as
    :class:`~agentrl.rollout.RolloutRunner`.

    Args:
        generate_fn: the slime generate function.
        args: what the function reads as ``args`` (must name the server's address).
        tokenizer: renders the chat prompt when ``apply_chat_template``.
        reward_fn: scores samples the function leaves unscored; ``None`` requires it to score them.
        config: sampling settings, concurrency and seed.
        weight_version: the engine's weight version, recorded on each trajectory.
        evaluation: passed to functions that take an ``evaluation`` keyword.
    """

    def __init__(
        self, generate_fn: Callable[..., Any], args: Namespace, tokenizer: PreTrainedTokenizerBase, reward_fn: RewardFn | None,
        config: RolloutConfig, *, apply_chat_template: bool = True, weight_version: int = 0, evaluation: bool = False,
    ) -> None:
        if not inspect.iscoroutinefunction(generate_fn):
            raise ConfigError("--custom-generate-function-path must name an async function (args, sample, sampling_params) -> Sample, as in slime")
        self.generate_fn, self.args, self.tokenizer, self.reward_fn = generate_fn, args, tokenizer, reward_fn
        self.config, self.apply_chat_template = config, apply_chat_template
        self.weight_version, self.evaluation = weight_version, evaluation
        self._takes_evaluation = "evaluation" in inspect.signature(generate_fn).parameters

    async def run(self, tasks: Iterable[Task], *, progress: bool = True, desc: str = "rollout") -> list[Trajectory]:
        """All episodes of ``tasks`` (``n_samples_per_prompt`` each), ordered by (task, sample)."""
        return await play_groups(tasks, self.config, self.episode, progress=progress, desc=desc)

    async def episode(self, task: Task, sample_index: int) -> Trajectory:
        sample = Sample(prompt=self._prompt(task), label=task.label, metadata=dict(task.metadata or {}), index=task.index,
                        group_index=task.index, status=Sample.Status.PENDING, session_id=f"{task.index}-{sample_index}")
        base = Trajectory(task.index, sample_index, [], [{"role": "user", "content": sample.prompt}], [0.0],
                          Termination.ENV_ERROR, [self.weight_version], label=task.label,
                          metrics={"turns": 0, "segments": 0, "prefix_mismatches": 0, "sampled_tokens": 0, "response_tokens": 0})
        try:
            kwargs = {"evaluation": self.evaluation} if self._takes_evaluation else {}
            sample = await self.generate_fn(self.args, sample, self._sampling_params(task, sample_index), **kwargs)
            if not isinstance(sample, Sample):
                raise TypeError(f"the generate function returned {type(sample).__name__}, not a Sample")
            segment = _segment(sample)
            reward = await self._reward(sample)
        except Exception as e:  # the function's failure ends its own episode, not the batch
            base.error = f"{type(e).__name__}: {e}"
            return base
        base.segments = [segment]
        base.messages.append({"role": "assistant", "content": sample.response})
        base.rewards = [reward]
        base.termination = TERMINATIONS.get(sample.status, Termination.ENV_ERROR)
        base.metrics |= {"turns": 1, "segments": 1, "sampled_tokens": sum(segment.loss_mask), "response_tokens": len(segment.response_ids)}
        return base

    def _prompt(self, task: Task) -> str:
        messages = [{"role": "user", "content": task.prompt}] if isinstance(task.prompt, str) else list(task.prompt)
        if not self.apply_chat_template:
            return "\n".join(m["content"] for m in messages)
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def _sampling_params(self, task: Task, sample_index: int) -> dict[str, Any]:
        c = self.config
        params: dict[str, Any] = {
            "temperature": c.temperature, "top_p": c.top_p, "top_k": c.top_k, "max_new_tokens": c.max_new_tokens,
            "stop": list(c.stop), "stop_token_ids": list(c.stop_token_ids), "no_stop_trim": True, "spaces_between_special_tokens": False,
        }
        if c.seed is not None:
            params["sampling_seed"] = derive_seed(c.seed, task.index, sample_index)
        return params

    async def _reward(self, sample: Sample) -> float:
        if sample.reward is not None:
            return float(sample.reward if not isinstance(sample.reward, dict) else sample.reward["reward"])
        if self.reward_fn is None:
            raise ConfigError("the generate function left sample.reward unset: give --rm-type or --custom-rm-path")
        prompt = sample.prompt if isinstance(sample.prompt, str) else "\n".join(m["content"] for m in sample.prompt)
        return await self.reward_fn(RewardInput(prompt, sample.response, sample.label, sample.metadata))


def _segment(sample: Sample) -> Segment:
    """The trainable sequence of a returned sample, checked for consistent lengths."""
    n = sample.response_length
    if not 0 < n <= len(sample.tokens):
        raise ValueError(f"sample.response_length {n} does not fit sample.tokens ({len(sample.tokens)} ids)")
    mask = list(sample.loss_mask) if sample.loss_mask is not None else [1] * n
    logprobs = list(sample.rollout_log_probs) if sample.rollout_log_probs is not None else [0.0] * n
    if len(mask) != n or len(logprobs) != n:
        raise ValueError(f"sample.loss_mask ({len(mask)}) and sample.rollout_log_probs ({len(logprobs)}) must have response_length ({n}) entries")
    return Segment(list(sample.tokens[:-n]), list(sample.tokens[-n:]), mask, [lp if m else 0.0 for lp, m in zip(logprobs, mask)])
