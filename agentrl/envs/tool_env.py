"""Tool envs in a few lines: typed Python functions (sync or async, with Google-style docstrings)
become tools.

    def add(a: int, b: int) -> int:
        \"\"\"Add two integers.

        Args:
            a: the first addend.
            b: the second addend.
        \"\"\"
        return a + b

    env = ToolEnv([add], system_prompt="Use the tools.")

:class:`ToolSet` holds the functions: their JSON schemas come from
``transformers.utils.get_json_schema`` (what Hugging Face chat templates take as ``tools``), and it
runs the calls of one turn concurrently (at most ``max_concurrent`` at once; sync functions in
threads, off the event loop), each under ``timeout_s``. Every model mistake becomes the call's
result text, never an exception: a call that did not parse, an unknown tool, bad arguments
(missing, unexpected or of the wrong JSON type), a tool that raised, a tool that ran out of time
(a sync tool's thread cannot be stopped; its late result is dropped). Agent programs can use a
``ToolSet`` too (``tools=toolset.schemas``, ``await toolset.call(...)``).

:class:`ToolEnv`: ``reset`` gives the optional system prompt (``{tools}`` in it is replaced by the
schemas as JSON, for templates that ignore ``tools``) and the task's prompt; a turn with tool calls
gets one ``tool`` message per call (cut to ``max_output_tokens`` tokens with a marker, when set) and
reward 0; a turn without calls is the answer: ``reward_fn(text, task)`` scores it and the episode
terminates. ``info`` counts ``tool_calls`` and ``tool_errors`` of the episode.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils.chat_template_utils import get_json_schema

from agentrl.envs.core import Action, Env, Message, StepResult, Task, ToolCall
from agentrl.envs.wrappers import Tokenizer, truncate_tokens
from agentrl.errors import ConfigError
from agentrl.rewards.text import exact_match

RewardFn = Callable[[str, Task], float | Awaitable[float]]
"""``reward_fn(answer_text, task) -> reward`` (sync or async)."""

JSON_TYPES: dict[str, tuple[type, ...]] = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,),
                                           "array": (list, tuple), "object": (dict,), "null": (type(None),)}


@dataclass(frozen=True)
class ToolResult:
    """The text a call gets back, and whether it was a model mistake or a tool failure."""

    content: str
    error: bool = False


class ToolSet:
    """Typed Python functions as tools. See the module docstring.

    Args:
        functions: the tools; each needs type hints and a docstring with an ``Args:`` section.
        timeout_s: limit of one call in seconds; ``None`` for none.
        max_concurrent: most calls of one :meth:`run` running at once.

    Raises:
        ConfigError: a function's schema cannot be made (no docstring, an untyped or undocumented
            argument), two tools share a name, or a limit is not positive.
    """

    def __init__(self, functions: Sequence[Callable[..., Any]], *, timeout_s: float | None = 10.0, max_concurrent: int = 4) -> None:
        if (timeout_s is not None and not timeout_s > 0) or max_concurrent < 1:
            raise ConfigError(f"ToolSet needs timeout_s > 0 (or None) and max_concurrent >= 1, got {timeout_s!r}, {max_concurrent!r}")
        self.functions: dict[str, Callable[..., Any]] = {}
        self.schemas: list[dict[str, Any]] = []
        for fn in functions:
            schema = _schema(fn)
            name = schema["function"]["name"]
            if name in self.functions:
                raise ConfigError(f"two tools are named {name!r}")
            self.functions[name], self.schemas = fn, [*self.schemas, schema]
        self.timeout_s, self.max_concurrent = timeout_s, max_concurrent

    async def run(self, calls: Sequence[ToolCall]) -> list[ToolResult]:
        """The result of each call, in order; at most ``max_concurrent`` run at once."""
        limit = asyncio.Semaphore(self.max_concurrent)

        async def one(call: ToolCall) -> ToolResult:
            async with limit:
                return await self.call(call)

        return list(await asyncio.gather(*(one(c) for c in calls)))

    async def call(self, call: ToolCall) -> ToolResult:
        """Run one call; every failure is a result with ``error`` set (see the module docstring)."""
        if call.error is not None or call.name is None:
            return ToolResult(f"Error: the tool call could not be parsed: {call.error}", True)
        fn = self.functions.get(call.name)
        if fn is None:
            return ToolResult(f"Error: unknown tool {call.name!r}; the tools are: {', '.join(self.functions)}", True)
        problem = self._argument_problem(call.name, call.arguments or {})
        if problem:
            return ToolResult(f"Error: bad arguments for {call.name}: {problem}", True)
        try:
            async with asyncio.timeout(self.timeout_s):
                value = await fn(**call.arguments or {}) if inspect.iscoroutinefunction(fn) else await asyncio.to_thread(fn, **call.arguments or {})
        except TimeoutError:
            return ToolResult(f"Error: {call.name} did not finish within {self.timeout_s:g}s", True)
        except Exception as e:
            return ToolResult(f"Error: {call.name} raised {type(e).__name__}: {e}", True)
        return ToolResult(value if isinstance(value, str) else _as_text(value))

    def _argument_problem(self, name: str, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` do not fit the tool's signature and schema, or ``None``."""
        try:
            inspect.signature(self.functions[name]).bind(**arguments)
        except TypeError as e:
            return str(e)
        properties = next(s for s in self.schemas if s["function"]["name"] == name)["function"]["parameters"].get("properties", {})
        for arg, value in arguments.items():
            schema = properties.get(arg, {})
            types = schema.get("type", [])
            allowed = [types] if isinstance(types, str) else list(types)
            allowed += ["null"] if schema.get("nullable") else []
            if allowed and not any(_is_json_type(value, t) for t in allowed):
                return f"{arg!r} must be {' or '.join(allowed)}, got {json.dumps(value)[:80]}"
        return None


def _schema(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return dict(get_json_schema(fn))
    except Exception as e:  # transformers raises its own exception types for each missing part
        raise ConfigError(f"tool {getattr(fn, '__name__', fn)!r}: no JSON schema can be made ({e}); give it type hints and a docstring with "
                          "an Args: section naming every argument") from e


def _is_json_type(value: Any, json_type: str) -> bool:
    if isinstance(value, bool) and json_type in ("integer", "number"):
        return False
    return isinstance(value, JSON_TYPES.get(json_type, (object,)))


def _as_text(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


class ToolEnv(Env):
    """An env whose tools are Python functions. See the module docstring.

    Args:
        tools: the functions, or a :class:`ToolSet` of them.
        system_prompt: the first message (``{tools}`` becomes the schemas as JSON); ``None``: none.
        reward_fn: scores the answer (a turn without tool calls); default: exact match with the
            task's label (SQuAD normalisation).
        max_output_tokens: cut each tool message to this many tokens of ``tokenizer``, with a
            visible marker; ``None``: no cut.
        tokenizer: the policy's tokenizer (needed with ``max_output_tokens``).
        timeout_s, max_concurrent: per call, and calls at once (see :class:`ToolSet`).
    """

    def __init__(self, tools: Sequence[Callable[..., Any]] | ToolSet, *, system_prompt: str | None = None, reward_fn: RewardFn | None = None,
                 max_output_tokens: int | None = None, tokenizer: Tokenizer | None = None, timeout_s: float | None = 10.0, max_concurrent: int = 4) -> None:
        self.toolset = tools if isinstance(tools, ToolSet) else ToolSet(tools, timeout_s=timeout_s, max_concurrent=max_concurrent)
        self.tools = self.toolset.schemas
        if max_output_tokens is not None and (max_output_tokens < 1 or tokenizer is None):
            raise ConfigError(f"ToolEnv max_output_tokens={max_output_tokens!r} needs a value >= 1 and the policy's tokenizer")
        self.system_prompt, self.reward_fn = system_prompt, reward_fn
        self.max_output_tokens, self.tokenizer = max_output_tokens, tokenizer
        self._task: Task | None = None
        self._calls = self._errors = 0

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self._task, self._calls, self._errors = task, 0, 0
        messages: list[Message] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt.replace("{tools}", json.dumps(self.tools))})
        messages.extend([{"role": "user", "content": task.prompt}] if isinstance(task.prompt, str) else task.prompt)
        return messages, {}

    async def step(self, action: Action) -> StepResult:
        assert self._task is not None, "reset before step"
        if not action.tool_calls:
            reward = await self.score(action.text, self._task)
            return StepResult([], reward, True, False, self._info())
        results = await self.toolset.run(action.tool_calls)
        self._calls += len(results)
        self._errors += sum(r.error for r in results)
        return StepResult([{"role": "tool", "content": self._cut(r.content)} for r in results], 0.0, False, False, self._info())

    async def score(self, text: str, task: Task) -> float:
        """The answer's reward: ``reward_fn``, or exact match with the label."""
        if self.reward_fn is None:
            return exact_match(text, task.label) if task.label is not None else 0.0
        value = self.reward_fn(text, task)
        return float(await value if inspect.isawaitable(value) else value)

    def _cut(self, content: str) -> str:
        if self.max_output_tokens is None or self.tokenizer is None:
            return content
        return truncate_tokens(content, self.max_output_tokens, self.tokenizer)

    def _info(self) -> dict[str, Any]:
        return {"tool_calls": self._calls, "tool_errors": self._errors}
