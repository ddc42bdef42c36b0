"""Reward functions by --rm-type, --custom-rm-path and a remote reward model over real HTTP."""

from __future__ import annotations

import re
import sys
import time

import pytest
from aiohttp import web

from agentrl.envs import Action, Task
from agentrl.envs.math_env import MathEnv
from agentrl.errors import ConfigError, EnvError
from agentrl.rewards.hub import RewardInput, RewardOverride, last_boxed, make_reward_fn
from agentrl.rewards.remote import RewardModelError
from agentrl.rewards.text import contains_answer, exact_match, f1_score, normalize_answer
from tests.http import serve
from tests.loop_probe import loop_probe


def test_search_r1_normalisation_exact_match_and_f1():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert exact_match("the Paris", ["paris", "Lyon"]) == 1.0 and exact_match("Paris, France", "Paris") == 0.0
    assert f1_score("Paris France", "Paris") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("London", ["Paris"]) == 0.0


def test_contains_answer_matches_whole_normalised_words():
    assert contains_answer("(Title: Peru) Peru uses the Sol.", ["sol", "PEN"])
    assert not contains_answer("Solomon Islands", "sol") and not contains_answer("anything", [""])


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None


@pytest.mark.parametrize(
    ("rm_type", "response", "label", "reward"),
    [("math", "so \\boxed{12}", "12", 1.0), ("boxed_math", "so \\boxed{12}", "12", 1.0), ("exact_match", "Paris", "paris", 1.0), ("boxed_exact_match", "It is \\boxed{Paris}.", "Paris", 1.0),
     ("boxed_f1", "no box here", "Paris", 0.0), ("f1", "Paris France", "Paris", pytest.approx(2 / 3))],
)
async def test_rm_types(rm_type, response, label, reward):
    fn = make_reward_fn(rm_type)
    assert await fn(RewardInput("q", response, label, {})) == reward


def test_unknown_rm_type_and_missing_url():
    with pytest.raises(ConfigError, match="unknown --rm-type 'nope'"):
        make_reward_fn("nope")
    with pytest.raises(ConfigError, match="--rm-type remote needs --rm-url"):
        make_reward_fn("remote")
    assert make_reward_fn(None) is None


async def test_custom_rm_path_takes_slime_signature(tmp_path, monkeypatch):
    (tmp_path / "my_rm.py").write_text(
        "async def reward(args, sample, **kwargs):\n    return float(sample.response.strip() == sample.label) + args['bonus']\n"
        "def not_async(args, sample):\n    return 1.0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = make_reward_fn(custom_rm_path="my_rm:reward", args={"bonus": 0.5})
    assert await fn(RewardInput("q", " 4 ", "4", {})) == 1.5
    slime_spelling = make_reward_fn(custom_rm_path="my_rm.reward", args={"bonus": 0.0})  # slime's dotted path
    assert await slime_spelling(RewardInput("q", "4", "4", {})) == 1.0
    with pytest.raises(ConfigError, match="must be an async function"):
        make_reward_fn(custom_rm_path="my_rm:not_async")
    with pytest.raises(ConfigError, match="could not be loaded"):
        make_reward_fn(custom_rm_path="my_rm.missing")
    sys.modules.pop("my_rm", None)


async def test_a_slime_reward_on_the_env_path_sees_the_task_index_as_the_group_index(tmp_path, monkeypatch):
    (tmp_path / "index_rm.py").write_text("async def reward(args, sample, **kwargs):\n    return float(sample.group_index)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = RewardOverride(MathEnv(), make_reward_fn(custom_rm_path="index_rm:reward"))
    await env.reset(Task("What is 2 + 3?", label="5", index=7))
    assert (await env.step(Action("\\boxed{5}"))).reward == 7.0
    sys.modules.pop("index_rm", None)


async def test_reward_override_replaces_the_env_reward_at_the_end():
    async def always_half(x: RewardInput) -> float:
        assert x.label == "5" and "2 + 3" in x.prompt and x.response == "\\boxed{5}"
        return 0.5

    env = RewardOverride(MathEnv(), always_half)
    await env.reset(Task("What is 2 + 3?", label="5"))
    result = await env.step(Action("\\boxed{5}"))
    assert result.reward == 0.5 and result.info["env_reward"] == 1.0


async def test_remote_reward_model_over_http_with_retries():
    calls = {"n": 0}

    async def handler(request):
        calls["n"] += 1
        body = await request.json()
        if calls["n"] == 1:
            return web.Response(status=503)
        if body["label"] == "bad":
            return web.json_response({"reward": "high"})
        return web.json_response({"reward": float(body["response"] == body["label"])})

    async with serve("/rm", handler) as url:
        fn = make_reward_fn("remote", rm_url=url)
        assert await fn(RewardInput("q", "42", "42", {})) == 1.0  # after one 503 and a retry
        assert calls["n"] == 2
        with pytest.raises(RewardModelError, match="expected a number"):
            await fn(RewardInput("q", "x", "bad", {}))
        await fn.aclose()


async def test_rm_type_math_scores_off_the_event_loop():
    fn = make_reward_fn("math")
    async with loop_probe() as probe:
        started = time.perf_counter()
        reward = await fn(RewardInput("q", "\\boxed{9^{9^{9}}}", "1", {}))
    assert reward == 0.0
    assert probe.ticks >= 0.5 * (time.perf_counter() - started) / 0.01, f"the event loop was blocked: {probe.ticks} ticks"


@pytest.mark.parametrize(("name", "shown"), [("nan_rm", "nan"), ("inf_rm", "inf"), ("text_rm", "'high'"), ("none_rm", "None")])
async def test_a_custom_rm_must_return_a_finite_number(tmp_path, monkeypatch, name, shown):
    (tmp_path / "odd_rms.py").write_text(
        "async def nan_rm(args, sample, **kwargs):\n    return float('nan')\n"
        "async def inf_rm(args, sample, **kwargs):\n    return float('inf')\n"
        "async def text_rm(args, sample, **kwargs):\n    return 'high'\n"
        "async def none_rm(args, sample, **kwargs):\n    return None\n"
        "async def dict_rm(args, sample, **kwargs):\n    return {'reward': 1.0}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "odd_rms", raising=False)
    fn = make_reward_fn(custom_rm_path=f"odd_rms:{name}")
    with pytest.raises(EnvError, match=rf"--custom-rm-path odd_rms:{name} returned {re.escape(shown)}; expected a finite number"):
        await fn(RewardInput("q", "4", "4", {}))


async def test_a_custom_rm_returning_a_dict_needs_the_reward_key(tmp_path, monkeypatch):
    (tmp_path / "dict_rms.py").write_text("async def dict_rm(args, sample, **kwargs):\n    return {'reward': 1.0, 'acc': True}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "dict_rms", raising=False)
    with pytest.raises(EnvError, match=r"returned a dict \{'reward': 1.0, 'acc': True\}: name the number to train on with --reward-key"):
        await make_reward_fn(custom_rm_path="dict_rms:dict_rm")(RewardInput("q", "4", "4", {}))
    keyed = make_reward_fn(custom_rm_path="dict_rms:dict_rm", args={"reward_key": "reward"})
    assert await keyed(RewardInput("q", "4", "4", {})) == 1.0
