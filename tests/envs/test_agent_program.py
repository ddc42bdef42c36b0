"""AgentProgramEnv through the real rollout runner: an openai-SDK program's episode equals the env
path's token for token; failures, timeouts and limits end only their own episode."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from agentrl.envs import Task, make
from agentrl.envs.agent_program import AgentProgramEnv
from agentrl.errors import ConfigError
from agentrl.policies import ScriptedPolicy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination
from tests.serving.openai_agent import SCRIPT, TASK, agents_sdk_program, env_path, openai_program


def runner(tokenizer, program, script=SCRIPT, **config):
    return RolloutRunner(ScriptedPolicy(tokenizer, script), ChatRenderer(tokenizer), lambda: AgentProgramEnv(program), RolloutConfig(**config))


@pytest.mark.parametrize("program", [openai_program, agents_sdk_program], ids=["openai", "agents-sdk"])
async def test_program_episode_equals_the_env_path(tokenizer, program):
    [played] = await runner(tokenizer, program, max_turns=8).run([TASK], progress=False)
    expected = await env_path(tokenizer)
    assert (played.termination, played.reward, played.error) == (Termination.DONE, 1.0, None)
    assert [dataclasses.asdict(s) for s in played.segments] == [dataclasses.asdict(s) for s in expected.segments]
    assert [m.get("tool_call_id") for m in played.messages if m["role"] == "tool"] == ["call_0_0", "call_1_0"]
    assert [m["content"] for m in played.messages] == [m["content"] for m in expected.messages]
    assert played.metrics["turns"] == expected.metrics["turns"] == 3
    assert played.info == {"requests": 3, "history_edits": 0}


async def fails_on_odd_tasks(client, task):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": task.prompt}])
    if task.index % 2:
        raise ValueError(f"program bug on task {task.index}")
    return {"reward": 0.5, "note": "ok"}


async def test_a_raising_program_ends_only_its_episode_with_the_traceback(tokenizer, caplog):
    tasks = [Task(f"q{i}", index=i) for i in range(4)]
    with caplog.at_level(logging.WARNING):
        played = await runner(tokenizer, fails_on_odd_tasks).run(tasks, progress=False)
    assert [t.termination for t in played] == [Termination.DONE, Termination.ENV_ERROR] * 2
    assert played[0].reward == 0.5 and played[0].info["note"] == "ok"
    assert "Traceback" in played[1].error and "ValueError: program bug on task 1" in played[1].error
    assert "agent program raised on task 1" in caplog.text


async def sleeps(client, task):
    await client.chat.completions.create(model="m", messages=[{"role": "user", "content": task.prompt}])
    await asyncio.sleep(3600)
    return 1.0


async def test_timeouts_end_the_episode_as_timeout(tokenizer):
    [by_run] = await runner(tokenizer, sleeps, episode_timeout_s=0.5).run([TASK], progress=False)
    env = AgentProgramEnv(sleeps, timeout_s=0.5)
    [by_env] = await RolloutRunner(ScriptedPolicy(tokenizer, SCRIPT), ChatRenderer(tokenizer), lambda: env).run([TASK], progress=False)
    assert by_run.termination == by_env.termination == Termination.TIMEOUT and by_run.excluded


async def loops_forever(client, task):
    messages = [{"role": "user", "content": task.prompt}]
    while True:
        messages.append((await client.chat.completions.create(model="m", messages=messages)).choices[0].message.model_dump(exclude_none=True))
        messages.append({"role": "user", "content": "again"})


async def test_the_turn_limit_refuses_the_next_request_and_ends_as_max_turns(tokenizer):
    [played] = await runner(tokenizer, loops_forever, script=["hello"], max_turns=2).run([TASK], progress=False)
    assert played.termination == Termination.MAX_TURNS and played.metrics["turns"] == 2 and played.reward == 0.0
    assert "limit of 2 turns" in played.error and "BadRequestError" in played.error


async def test_registered_by_id_with_the_program_as_a_path(tokenizer):
    env = make("agentrl/AgentProgram-v0", program="tests.serving.openai_agent:openai_program")
    assert isinstance(env.unwrapped, AgentProgramEnv)
    [played] = await RolloutRunner(ScriptedPolicy(tokenizer, SCRIPT), ChatRenderer(tokenizer), lambda: env).run([TASK], progress=False)
    assert played.reward == 1.0
    with pytest.raises(ConfigError, match="must be an async function"):
        AgentProgramEnv(lambda client, task: 1.0)
