"""ToolEnv and ToolSet: schemas from typed functions, concurrent calls under a cap, every model
mistake and tool failure as a tool message, output cut in tokens, and the Env contract."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentrl.envs import Action, Task, ToolCall, check_env
from agentrl.envs.tool_calls import parse_hermes
from agentrl.envs.tool_env import ToolEnv, ToolSet
from agentrl.errors import ConfigError
from tests.loop_probe import loop_probe
from tests.serving.openai_agent import add

running = {"now": 0, "most": 0}


async def slow_square(x: int) -> int:
    """Square a number, slowly.

    Args:
        x: the number.
    """
    running["now"] += 1
    running["most"] = max(running["most"], running["now"])
    await asyncio.sleep(0.2)
    running["now"] -= 1
    return x * x


def blocking_echo(text: str, times: int | None = None) -> str:
    """Echo text (blocks its thread, never the event loop).

    Args:
        text: what to echo.
        times: how often; once by default.
    """
    time.sleep(0.2)
    return text * (times or 1)


def explode(reason: str) -> str:
    """Always raise.

    Args:
        reason: the message.
    """
    raise RuntimeError(reason)


async def hang() -> str:
    """Never return."""
    await asyncio.sleep(3600)
    return ""


def call(name, **arguments) -> ToolCall:
    return ToolCall(raw="", name=name, arguments=arguments)


def test_schemas_come_from_type_hints_and_docstrings():
    [schema] = ToolSet([blocking_echo]).schemas
    function = schema["function"]
    assert schema["type"] == "function" and function["name"] == "blocking_echo" and function["description"].startswith("Echo text")
    assert function["parameters"]["properties"]["text"] == {"type": "string", "description": "what to echo."}
    assert function["parameters"]["required"] == ["text"]
    with pytest.raises(ConfigError, match="no JSON schema can be made"):
        ToolSet([lambda x: x])
    with pytest.raises(ConfigError, match="two tools are named 'add'"):
        ToolSet([add, add])


async def test_calls_of_a_turn_run_concurrently_under_the_cap_and_off_the_loop():
    tools = ToolSet([slow_square, blocking_echo], max_concurrent=2)
    started = time.perf_counter()
    results = await tools.run([call("slow_square", x=k) for k in range(4)])
    assert [r.content for r in results] == ["0", "1", "4", "9"] and running["most"] == 2
    assert 0.35 < time.perf_counter() - started < 1.5  # two waves of two
    async with loop_probe() as probe:
        [echo] = await tools.run([call("blocking_echo", text="ab", times=2)])
    assert echo.content == "abab" and probe.ticks >= 10  # the loop ran while the sync tool slept in its thread


@pytest.mark.parametrize(
    ("tool_call", "says"),
    [
        (parse_hermes("<tool_call>{oops</tool_call>")[0], "Error: the tool call could not be parsed: tool call is not valid JSON: Expecting property name enclosed in double quotes at column 2"),
        (call("nope"), "Error: unknown tool 'nope'; the tools are: add, explode, hang"),
        (call("add", a=1), "Error: bad arguments for add: missing a required argument: 'b'"),
        (call("add", a=1, b=2, c=3), "Error: bad arguments for add: got an unexpected keyword argument 'c'"),
        (call("add", a=1, b="2"), "Error: bad arguments for add: 'b' must be integer, got \"2\""),
        (call("add", a=True, b=2), "Error: bad arguments for add: 'a' must be integer, got true"),
        (call("explode", reason="kaboom"), "Error: explode raised RuntimeError: kaboom"),
        (call("hang"), "Error: hang did not finish within 0.2s"),
    ],
)
async def test_model_mistakes_and_tool_failures_become_results(tool_call, says):
    [result] = await ToolSet([add, explode, hang], timeout_s=0.2).run([tool_call])
    assert result.error and result.content == says


async def test_a_turn_with_calls_gets_tool_messages_cut_in_tokens_and_an_answer_ends_it(tokenizer):
    env = ToolEnv([add, blocking_echo], system_prompt="Tools: {tools}", max_output_tokens=5, tokenizer=tokenizer)
    messages, _ = await env.reset(Task("What is 2 + 3?", label="5"))
    assert '"name": "blocking_echo"' in messages[0]["content"] and messages[1] == {"role": "user", "content": "What is 2 + 3?"}
    text = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call><tool_call>{"name": "blocking_echo", "arguments": {"text": "word ", "times": 20}}</tool_call>'
    observation, reward, terminated, _, info = await env.step(Action(text, parse_hermes(text)))
    assert observation[0] == {"role": "tool", "content": "5"} and (reward, terminated) == (0.0, False)
    cut = observation[1]["content"]
    assert cut == "word word word word word\n[... truncated 16 tokens]" and len(tokenizer.encode(cut.split("\n[")[0], add_special_tokens=False)) == 5
    assert info == {"tool_calls": 2, "tool_errors": 0}
    assert (await env.step(Action("5")))[1:3] == (1.0, True)
    with pytest.raises(ConfigError, match="needs a value >= 1 and the policy's tokenizer"):
        ToolEnv([add], max_output_tokens=5)


async def test_tool_env_passes_check_env(tokenizer):
    def factory():
        from agentrl.envs import MaxTurns, OrderEnforcing

        return OrderEnforcing(MaxTurns(ToolEnv([add], reward_fn=lambda text, task: float("5" in text)), 4))

    report = await check_env(factory, tasks=[Task("What is 2 + 3?", label="5")], tokenizer=tokenizer)
    assert report.ok, str(report)
