"""Reward functions by name (``--rm-type``) or by path (``--custom-rm-path``), and the wrapper
that lets them score an env's episodes in place of the env's own reward.

``--rm-type``: ``math`` (Math-Verify on the last ``\\boxed{}``, in worker processes off the event loop
with a hard timeout: see :class:`~agentrl.rewards.math.MathScorer`), ``exact_match``, ``f1``,
``remote`` (``--rm-url``); a ``boxed_`` prefix (``boxed_exact_match``) scores only the content of
the last ``\\boxed{}``. slime's scorers (``deepscaler``, ``dapo``, ``slime_math``, ``slime_f1``,
``remote_rm``, ``random``: :mod:`agentrl.rewards.slime_rm`) score slime ``Sample`` objects.

``--custom-rm-path pkg.module:fn`` takes slime's signature ``async def fn(args, sample, **kwargs)``
with slime's ``Sample`` and slime's ``args`` (:mod:`agentrl.compat.slime_args`). The number
trained on is its return value, or the return value's ``--reward-key`` entry when it returns a
dict; anything else that is not a finite number raises :class:`~agentrl.errors.EnvError` (the
episode ends as ``env_error``).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from agentrl.compat.slime_args import plugin_args
from agentrl.compat.slime_types import Sample
from agentrl.envs.core import Action, Env, Message, StepResult, Task
from agentrl.envs.wrappers import Wrapper
from agentrl.errors import ConfigError
from agentrl.plugins import load_function
from agentrl.rewards.math import shared_math_scorer
from agentrl.rewards.remote import RemoteRewardModel
from agentrl.rewards.slime_rm import SampleScore, is_slime_rm_type, reward_value, score_rm_type
from agentrl.rewards.text import exact_match, f1_score
from agentrl.rewards.types import RewardFn, RewardInput

TextReward = Callable[[str, Any], Awaitable[float]]
"""Scores a response against a label."""


async def _math(response: str, label: Any) -> float:
    """Math-Verify in the shared worker processes; a timeout scores 0 with a warning."""
    return (await shared_math_scorer().score(response, label)).reward


def _cheap(score: Callable[[str, Any], float]) -> TextReward:
    """A reward fast enough to compute on the event loop."""

    async def reward(response: str, label: Any) -> float:
        return score(response, label)

    return reward


TEXT_REWARDS: dict[str, TextReward] = {"math": _math, "exact_match": _cheap(exact_match), "f1": _cheap(f1_score)}


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def make_reward_fn(rm_type: str | None = None, *, rm_url: str | None = None, custom_rm_path: str | None = None, args: Any = None) -> RewardFn | None:
    """The reward function the flags name, or ``None`` to keep the env's own rewards."""
    if custom_rm_path:
        return _custom(custom_rm_path, args)
    if rm_type is None:
        return None
    if rm_type == "remote":
        if not rm_url:
            raise ConfigError("--rm-type remote needs --rm-url")
        return RemoteRewardModel(rm_url)
    if is_slime_rm_type(rm_type):
        if rm_type.removeprefix("boxed_") == "remote_rm" and not rm_url:
            raise ConfigError("--rm-type remote_rm needs --rm-url")
        return SlimeReward(score_rm_type, plugin_args(args), source=f"--rm-type {rm_type}")
    boxed, name = rm_type.startswith("boxed_"), rm_type.removeprefix("boxed_")
    if name not in TEXT_REWARDS:
        raise ConfigError(f"unknown --rm-type {rm_type!r}: use one of {sorted(TEXT_REWARDS)} (optionally boxed_...), remote, slime's "
                          "deepscaler, dapo, slime_math, slime_f1, remote_rm, random, or --custom-rm-path")
    score = TEXT_REWARDS[name]
    boxed = boxed and name != "math"  # Math-Verify reads the last \boxed{} itself: boxed_math is math

    async def text_reward(x: RewardInput) -> float:
        response = last_boxed(x.response) if boxed else x.response
        return 0.0 if response is None else float(await score(response, x.label))

    return text_reward


def _custom(path: str, args: Any) -> RewardFn:
    fn = load_function(path, flag="--custom-rm-path")
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"--custom-rm-path {path!r} must be an async function (args, sample, **kwargs) -> float, as in slime")
    return SlimeReward(fn, plugin_args(args), source=f"--custom-rm-path {path}", batch_for_lists=True)


class SlimeReward:
    """A slime reward function (``async (args, sample) -> reward``), usable as a
    :data:`~agentrl.rewards.types.RewardFn` too.

    :meth:`score_sample` scores a ``Sample`` as it is (the one a generate function returned, with
    every attribute it set) and returns the raw reward; calling the object with a
    :class:`RewardInput` (an env's episode) builds a completed ``Sample`` from it and returns the
    number to train on (:func:`~agentrl.rewards.slime_rm.reward_value` with ``args.reward_key``).

    Args:
        score: the function.
        args: what it gets as ``args``.
        source: how errors name it (the flag and its value).
        batch_for_lists: the samples of a ``list[Sample]`` return are scored in one call,
            ``score(args, samples) -> list`` (slime's ``batched_async_rm`` for a custom function).
    """

    def __init__(self, score: SampleScore, args: Any, *, source: str, batch_for_lists: bool = False) -> None:
        self.score, self.args, self.source, self.batch_for_lists = score, args, source, batch_for_lists

    async def score_sample(self, sample: Sample, args: Any = None) -> Any:
        """The raw reward of ``sample`` (a number or a dict), scored with ``args`` (default: the
        ones given at construction)."""
        return await self.score(self.args if args is None else args, sample)

    async def score_batch(self, samples: list[Sample], args: Any = None) -> Any:
        """The raw rewards of ``samples`` from one call (``batch_for_lists``)."""
        return await self.score(self.args if args is None else args, samples)  # type: ignore[arg-type]  # slime's batch form

    async def __call__(self, x: RewardInput) -> float:
        sample = Sample(prompt=x.prompt, response=x.response, label=x.label, metadata=dict(x.metadata), group_index=x.task_index,
                        status=Sample.Status.COMPLETED)
        raw = await self.score_sample(sample)
        key = self.args.get("reward_key") if isinstance(self.args, dict) else getattr(self.args, "reward_key", None)
        return reward_value(raw, key, source=self.source)


class RewardOverride(Wrapper):
    """Scores the episode with ``reward_fn`` when it ends, replacing the env's rewards.

    The prompt is the text of the opening messages, the response the policy's turns joined;
    steps before the last get reward 0, the last gets the function's score.
    """

    def __init__(self, env: Env, reward_fn: RewardFn) -> None:
        super().__init__(env)
        self.reward_fn = reward_fn
        self._task: Task | None = None
        self._prompt = ""
        self._turns: list[str] = []

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        messages, info = await self.env.reset(task, seed=seed)
        self._task, self._turns = task, []
        self._prompt = "\n".join(m["content"] for m in messages)
        return messages, info

    async def step(self, action: Action) -> StepResult:
        result = await self.env.step(action)
        self._turns.append(action.text)
        if not (result.terminated or result.truncated):
            return result._replace(reward=0.0)
        assert self._task is not None, "reset before step"
        x = RewardInput(self._prompt, "\n".join(self._turns), self._task.label, self._task.metadata, self._task.index)
        reward = await self.reward_fn(x)
        return result._replace(reward=reward, info={**result.info, "env_reward": result.reward})
