"""The built-in math env is a one-step env scored by the rewards module."""

from __future__ import annotations

import time

from agentrl.envs import Action, Task, make
from agentrl.envs.math_env import DEFAULT_INSTRUCTION, MathEnv
from tests.loop_probe import loop_probe

PATHOLOGICAL = "\\boxed{9^{9^{9}}}"
"""sympy works on this for minutes, holding the GIL; only Math-Verify's SIGALRM (main thread) or a kill stops it."""


async def test_one_step_scores_the_boxed_answer_and_terminates():
    env = make("agentrl/Math-v0")
    messages, info = await env.reset(Task("What is 2 + 3?", label="5"))
    assert messages == [{"role": "user", "content": f"What is 2 + 3?\n{DEFAULT_INSTRUCTION}"}]
    obs, reward, terminated, truncated, info = await env.step(Action("It is \\boxed{5}"))
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info == {"correct": True, "format_ok": True, "extracted": "5", "score_timeout": False}
    await env.close()


async def test_format_reward_and_message_prompts():
    env = MathEnv(instruction="", system_prompt="Be brief.", format_reward=0.1)
    messages, _ = await env.reset(Task("1+1?", label="2"))
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    assert (await env.step(Action("\\boxed{3}"))).reward == 0.1
    assert (await env.step(Action("3"))).reward == 0.0
    chat = [{"role": "user", "content": "hi"}]
    assert (await MathEnv().reset(Task(chat, label="2")))[0] == chat


async def test_scoring_does_not_block_the_event_loop():
    env = MathEnv()
    await env.reset(Task("How big is it?", label="1"))
    async with loop_probe() as probe:
        started = time.perf_counter()
        result = await env.step(Action(PATHOLOGICAL))
    assert result.reward == 0.0
    assert probe.ticks >= 0.5 * (time.perf_counter() - started) / 0.01, f"the event loop was blocked: {probe.ticks} ticks"


async def test_a_scoring_timeout_scores_zero_and_is_reported_in_info(caplog):
    from agentrl.rewards.math import MathScorer

    scorer = MathScorer(workers=1, timeout_s=0.5)
    try:
        env = MathEnv(format_reward=0.1, scorer=scorer)
        await env.reset(Task("How big is it?", label="1"))
        await env.step(Action("\\boxed{2}"))  # the worker is up
        started = time.perf_counter()
        _, reward, terminated, _, info = await env.step(Action(PATHOLOGICAL))
        assert time.perf_counter() - started < 1.5 and (reward, terminated) == (0.0, True)
        assert info == {"correct": False, "format_ok": False, "extracted": None, "score_timeout": True}
        assert "timed out" in caplog.text
    finally:
        scorer.close()
