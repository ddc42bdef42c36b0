"""A scripted tool-calling episode played both ways: by the env path (RolloutRunner + ToolEnv) and
by agent programs written against the ``openai`` SDK and the OpenAI Agents SDK."""

from __future__ import annotations

import json

from agentrl.envs import Task, ToolCall
from agentrl.envs.tool_env import ToolEnv, ToolSet
from agentrl.policies import ScriptedPolicy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Trajectory


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first addend.
        b: the second addend.
    """
    return a + b


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor.
        b: the second factor.
    """
    return a * b


SYSTEM = "You are a calculator agent. Call tools, then answer."
TASK = Task("What is (2 + 3) * 7?", label="35", index=0)
SCRIPT = [
    '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>',
    'Now multiply. <tool_call>{"name": "multiply", "arguments": {"a": 5, "b": 7}}</tool_call>',
    "35",
]
"""Three turns: a call, text and a call, the answer."""


def toolset() -> ToolSet:
    return ToolSet([add, multiply])


async def env_path(tokenizer, script=SCRIPT) -> Trajectory:
    """The episode as the rollout runner plays it against ToolEnv."""
    runner = RolloutRunner(ScriptedPolicy(tokenizer, script), ChatRenderer(tokenizer), lambda: ToolEnv([add, multiply], system_prompt=SYSTEM),
                           RolloutConfig(max_turns=8))
    [trajectory] = await runner.run([TASK], progress=False)
    return trajectory


async def openai_program(client, task: Task, *, stream: bool = False) -> float:
    """A plain tool loop on the openai SDK: call tools until the model answers."""
    tools = toolset()
    messages: list[dict] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": task.prompt}]
    for _ in range(8):
        message = await _complete(client, messages, tools.schemas, stream)
        messages.append(message)
        if not message.get("tool_calls"):
            return float(message["content"].strip() == task.label)
        for call in message["tool_calls"]:
            result = await tools.call(ToolCall(raw="", name=call["function"]["name"], arguments=json.loads(call["function"]["arguments"])))
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result.content})
    return 0.0


async def _complete(client, messages: list[dict], tools: list[dict], stream: bool) -> dict:
    if not stream:
        response = await client.chat.completions.create(model="agentrl", messages=messages, tools=tools)
        return response.choices[0].message.model_dump(exclude_none=True)
    content, calls = "", {}
    async for chunk in await client.chat.completions.create(model="agentrl", messages=messages, tools=tools, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            calls[call.index] = {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
    message = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [calls[k] for k in sorted(calls)]
    return message


async def agents_sdk_program(client, task: Task) -> float:
    """The same agent on the OpenAI Agents SDK, through its Chat Completions model."""
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    model = OpenAIChatCompletionsModel(model="agentrl", openai_client=client)
    agent = Agent(name="calculator", instructions=SYSTEM, model=model, tools=[function_tool(add), function_tool(multiply)],
                  model_settings=ModelSettings())
    result = await Runner.run(agent, task.prompt, max_turns=8)
    return float(str(result.final_output).strip() == task.label)
