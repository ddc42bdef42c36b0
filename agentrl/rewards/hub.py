"""Reward functions by name (``--rm-type``) or by path (``--custom-rm-path``), and the wrapper
that lets them score an env's episodes in place of the env's own reward.

``--rm-type``: ``math`` (Math-Verify on the last ``\\boxed{}``, in worker processes off the event loop
with a hard timeout: see :class:`~agentrl.rewards.math.MathScorer`), ``exact_match``, ``f1``,
``remote`` (``--rm-url``); a ``boxed_`` prefix (``boxed_exact_match``) scores only the content of
the last ``\\boxed{}``. ``--custom-rm-path pkg.module:fn`` takes slime's signature
``async def fn(args, sample, **kwargs) -> float`` with a slime-shaped ``Sample``; a return value
that is not a finite number raises :class:`~agentrl.errors.EnvError` (the episode ends as
``env_error``).
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Awaitable, Callable
from typing import Any

from agentrl.compat.slime import Sample
from agentrl.envs.core import Action, Env, Message, StepResult, Task
from agentrl.envs.wrappers import Wrapper
from agentrl.errors import ConfigError, EnvError
from agentrl.plugins import load_function
from agentrl.rewards.math import shared_math_scorer
from agentrl.rewards.remote import RemoteRewardModel
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
    boxed, name = rm_type.startswith("boxed_"), rm_type.removeprefix("boxed_")
    if name not in TEXT_REWARDS:
        raise ConfigError(f"unknown --rm-type {rm_type!r}: use one of {sorted(TEXT_REWARDS)} (optionally boxed_...), remote, or --custom-rm-path")
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

    async def custom(x: RewardInput) -> float:
        sample = Sample(prompt=x.prompt, response=x.response, label=x.label, metadata=x.metadata)
        value = await fn(args, sample)
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise EnvError(f"--custom-rm-path {path} returned {value!r:.200}; expected a finite number (int or float), as slime's reward functions return")
        return float(value)

    return custom


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
        x = RewardInput(self._prompt, "\n".join(self._turns), self._task.label, self._task.metadata)
        reward = await self.reward_fn(x)
        return result._replace(reward=reward, info={**result.info, "env_reward": result.reward})
