"""slime's reward functions over slime ``Sample`` objects: its built-in ``--rm-type`` scorers
(``slime/rollout/rm_hub/__init__.py`` ``async_rm`` at slime 624b824) and ``--custom-rm-path``
functions, scoring the very ``Sample`` a generate function returned.

=================  ===========================================================================
``--rm-type``      score (slime's)
=================  ===========================================================================
``deepscaler``     1/0: the boxed answer after ``</think>`` (:mod:`agentrl.rewards.hendrycks`)
``dapo``           ``{"score": ±1.0, "acc", "pred"}`` (:mod:`agentrl.rewards.dapo`): needs ``--reward-key score``
``slime_math``     1/0: slime's ``math`` (deepscaler's grading of the last ``\\boxed{}``)
``slime_f1``       slime's ``f1``: SQuAD token F1 against one gold string, 0 on a yes/no/noanswer mismatch
``remote_rm``      whatever ``POST --rm-url {prompt, response, label}`` answers (a number, or a dict for ``--reward-key``)
``random``         0 or 1 at random
=================  ===========================================================================

``boxed_NAME`` scores only the content of the response's last ``\\boxed{}`` ("" without one);
``sample.metadata["rm_type"]`` overrides ``--rm-type`` for that sample, as in slime. agentrl's
own ``math`` (Math-Verify) and ``f1`` (best over a list of golds) keep their names; slime's
versions are ``slime_math`` and ``slime_f1``.

The raw score is what ``sample.reward`` holds; :func:`reward_value` reads the number to train on
(``--reward-key`` picks it out of a dict).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agentrl.compat.slime import post
from agentrl.compat.slime_types import Sample
from agentrl.errors import ConfigError, EnvError
from agentrl.plugins import load_function
from agentrl.rewards.dapo import dapo_score
from agentrl.rewards.hendrycks import deepscaler_reward, extract_answer, grade_answer_verl
from agentrl.rewards.text import normalize_answer

SampleScore = Callable[[Any, Sample], Awaitable[Any]]
"""``async (args, sample) -> raw reward`` (a number, or a dict read through ``--reward-key``)."""
REMOTE_RM_RETRIES = 10
_rng = random.Random()


def slime_f1(prediction: str | None, truth: str) -> tuple[float, float, float]:
    """slime's ``f1_score``: ``(f1, precision, recall)`` of the normalised tokens; all 0 when one
    side is yes/no/noanswer and the other differs."""
    if prediction is None:
        return 0.0, 0.0, 0.0
    pred, gold = normalize_answer(prediction), normalize_answer(truth)
    if (pred in ("yes", "no", "noanswer") or gold in ("yes", "no", "noanswer")) and pred != gold:
        return 0.0, 0.0, 0.0
    pred_tokens, gold_tokens = pred.split(), gold.split()
    common = sum(min(pred_tokens.count(t), gold_tokens.count(t)) for t in set(pred_tokens))
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


async def _remote_rm(args: Any, sample: Sample) -> Any:
    url = getattr(args, "rm_url", None)
    if not url:
        raise ConfigError("--rm-type remote_rm needs --rm-url")
    return await post(url, {"prompt": sample.prompt, "response": sample.response, "label": sample.label}, max_retries=REMOTE_RM_RETRIES)


async def _off_loop(fn: Callable[[str, Any], Any], response: str, label: Any) -> Any:
    """Rule-based scorers may run sympy for a while: never on the event loop."""
    return await asyncio.to_thread(fn, response, label)


TEXT_SCORERS: dict[str, Callable[[str, Any], Awaitable[Any]]] = {
    "deepscaler": lambda r, label: _off_loop(deepscaler_reward, r, label),
    "dapo": lambda r, label: _off_loop(dapo_score, r, label),
    "slime_math": lambda r, label: _off_loop(lambda x, y: int(grade_answer_verl(x, y)), r, label),
    "slime_f1": lambda r, label: _off_loop(lambda x, y: slime_f1(x, y)[0], r, label),
    "random": lambda r, label: _off_loop(lambda x, y: _rng.randint(0, 1), r, label),
}
"""Scorers of (response, label); ``remote_rm`` is the one that needs the whole sample."""
SLIME_RM_TYPES = frozenset({*TEXT_SCORERS, "remote_rm"})


def is_slime_rm_type(rm_type: str) -> bool:
    """Whether ``rm_type`` (``boxed_`` prefix allowed) names one of slime's scorers."""
    return rm_type.removeprefix("boxed_") in SLIME_RM_TYPES


async def score_rm_type(args: Any, sample: Sample) -> Any:
    """The raw score of ``sample`` by ``sample.metadata["rm_type"]`` or ``args.rm_type``.

    Raises:
        ConfigError: neither names one of slime's scorers.
    """
    metadata = sample.metadata if isinstance(sample.metadata, dict) else {}
    rm_type = str(metadata.get("rm_type") or getattr(args, "rm_type", None) or "").strip()
    response = sample.response
    if rm_type.startswith("boxed_"):
        response, rm_type = extract_answer(response) or "", rm_type.removeprefix("boxed_")
    if rm_type == "remote_rm":
        return await _remote_rm(args, sample)
    if rm_type not in TEXT_SCORERS:
        raise ConfigError(f"--rm-type {rm_type or '(unset)'!r} is not one of slime's scorers: {', '.join(sorted(SLIME_RM_TYPES))}")
    return await TEXT_SCORERS[rm_type](response, sample.label)


def reward_value(raw: Any, reward_key: str | None, *, source: str) -> float:
    """The finite number to train on: ``raw[reward_key]`` with a key, ``raw`` without.

    Raises:
        EnvError: no key was given for a dict, the key is missing, or the value is not a finite
            number (``source`` names the reward function).
    """
    value = raw
    if reward_key:
        if not isinstance(raw, Mapping) or reward_key not in raw:
            raise EnvError(f"{source} returned {raw!r:.200}, which has no key {reward_key!r} (--reward-key)")
        value = raw[reward_key]
    elif isinstance(raw, Mapping):
        raise EnvError(f"{source} returned a dict {raw!r:.200}: name the number to train on with --reward-key (e.g. --reward-key score)")
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise EnvError(f"{source} returned {value!r:.200}; expected a finite number (int or float), as slime's reward functions return")
    return float(value)


async def async_rm(args: Any, sample: Sample, **kwargs: Any) -> Any:
    """slime's ``rm_hub.async_rm``: the sample's own ``custom_rm_path``, else ``--custom-rm-path``,
    else the ``--rm-type`` scorer; the raw reward."""
    path = sample.custom_rm_path or getattr(args, "custom_rm_path", None)
    if path:
        return await load_function(path, flag="--custom-rm-path")(args, sample, **kwargs)
    return await score_rm_type(args, sample)


async def batched_async_rm(args: Any, samples: list[Sample], **kwargs: Any) -> list[Any]:
    """slime's ``rm_hub.batched_async_rm``: a ``--custom-rm-path`` function scores the list in one
    call; the ``--rm-type`` scorers score each sample."""
    path = getattr(args, "custom_rm_path", None)
    if path:
        return list(await load_function(path, flag="--custom-rm-path")(args, samples, **kwargs))
    return list(await asyncio.gather(*(score_rm_type(args, s) for s in samples)))
