"""The built-in math env is a one-step env scored by the rewards module."""

from __future__ import annotations

from agentrl.envs import Action, Task, make
from agentrl.envs.math_env import DEFAULT_INSTRUCTION, MathEnv


async def test_one_step_scores_the_boxed_answer_and_terminates():
    env = make("agentrl/Math-v0")
    messages, info = await env.reset(Task("What is 2 + 3?", label="5"))
    assert messages == [{"role": "user", "content": f"What is 2 + 3?\n{DEFAULT_INSTRUCTION}"}]
    obs, reward, terminated, truncated, info = await env.step(Action("It is \\boxed{5}"))
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert info == {"correct": True, "format_ok": True, "extracted": "5"}
    await env.close()


async def test_format_reward_and_message_prompts():
    env = MathEnv(instruction="", system_prompt="Be brief.", format_reward=0.1)
    messages, _ = await env.reset(Task("1+1?", label="2"))
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]
    assert (await env.step(Action("\\boxed{3}"))).reward == 0.1
    assert (await env.step(Action("3"))).reward == 0.0
    chat = [{"role": "user", "content": "hi"}]
    assert (await MathEnv().reset(Task(chat, label="2")))[0] == chat
