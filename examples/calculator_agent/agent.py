"""A calculator agent written against the ``openai`` SDK, trained unchanged by agentrl.

``run(client, task)`` is an ordinary tool loop: it asks the model, runs each ``calculate`` call the
model makes (Hermes ``<tool_call>`` format, parsed by the endpoint into OpenAI ``tool_calls``),
sends the results back, and scores the final answer against the task's label. agentrl plays it as
``agentrl/AgentProgram-v0`` with ``program: examples.calculator_agent.agent:run``; the model
never knows it is being trained.

SmolLM2's chat template ignores ``tools``, so the system prompt shows the call format itself.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from typing import Any

from agentrl.envs import Task, ToolCall
from agentrl.envs.tool_env import ToolSet

MAX_TURNS = 3
TOOL_SHAPING = 0.1
"""Reward of a wrong answer after calls that all ran: the base model never calls the tool
greedily, so GRPO needs the sampled calls to count for something before answers get right."""
SYSTEM = (
    "You are a calculator assistant. Never compute in your head: for any arithmetic, call the calculator by writing exactly\n"
    '<tool_call>{"name": "calculate", "arguments": {"expression": "1234 * 56"}}</tool_call>\n'
    "with the numbers of the question. You get the result back. Then reply with: The answer is RESULT."
)
EXAMPLE = [
    {"role": "user", "content": "What is 4821 * 37?"},
    {"role": "assistant", "content": '<tool_call>{"name": "calculate", "arguments": {"expression": "4821 * 37"}}</tool_call>'},
    {"role": "tool", "content": "178377"},
    {"role": "assistant", "content": "The answer is 178377."},
]
"""One worked exchange before the question: without it the 135M model never wrote a call
(0 of 320 samples at temperature 0.8), so GRPO had nothing to reinforce."""
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
NUMBER = re.compile(r"-?\d[\d,]*")


def calculate(expression: str) -> str:
    """Evaluate an integer arithmetic expression with + - * // % and parentheses.

    Args:
        expression: the expression, e.g. "1234 * 56 - 7".
    """
    return str(_evaluate(ast.parse(expression, mode="eval").body))


def _evaluate(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        return int(OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    raise ValueError(f"only integers, + - * // % and parentheses are allowed, not {ast.unparse(node)!r}")


async def run(client: Any, task: Task) -> dict[str, Any]:
    """One episode: the tool loop, then the reward (1 for the right number) and what happened."""
    tools = ToolSet([calculate], timeout_s=5)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, *EXAMPLE, {"role": "user", "content": str(task.prompt)}]
    calls = errors = 0
    text = ""
    for _ in range(MAX_TURNS):
        message = (await client.chat.completions.create(model="agentrl", messages=messages, tools=tools.schemas)).choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        text = message.content or ""
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            result = await tools.call(ToolCall(raw="", name=call.function.name, arguments=_arguments(call.function.arguments)))
            calls, errors = calls + 1, errors + result.error
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result.content})
    answer = final_number(text)
    correct = answer is not None and answer == str(task.label)
    tool_success = calls > 0 and errors == 0
    reward = 1.0 if correct else TOOL_SHAPING if tool_success else 0.0
    return {"reward": reward, "correct": correct, "tool_calls": calls, "tool_errors": errors, "tool_success": tool_success}


def _arguments(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def final_number(text: str) -> str | None:
    """The last integer in the answer, without thousands separators, or ``None``."""
    numbers = NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None
