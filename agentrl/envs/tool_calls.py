"""Tool-call parsers: the policy's text in, :class:`~agentrl.envs.core.ToolCall` records out.

A parser never drops a call: text that looks like a call but does not parse still yields a
``ToolCall`` with ``error`` set, so the env can tell the model what went wrong.

Parsers are named in config (``tool_parser: hermes``) or given as a dotted path to any callable
of type :class:`ToolCallParser`.
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Protocol, cast

from agentrl.envs.core import ToolCall
from agentrl.errors import ConfigError


class ToolCallParser(Protocol):
    def __call__(self, text: str) -> tuple[ToolCall, ...]: ...


def parse_none(text: str) -> tuple[ToolCall, ...]:
    """No tool calls: for envs that read the text themselves (tags, answers)."""
    return ()


_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.DOTALL)


def parse_hermes(text: str) -> tuple[ToolCall, ...]:
    """Hermes / Qwen format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

    An unclosed tag (a turn cut by its length limit) or invalid JSON gives a call with ``error``.
    """
    calls = []
    for match in _HERMES.finditer(text):
        body, closing = match.group(1), match.group(2)
        raw = match.group(0)
        if not closing:
            calls.append(ToolCall(raw=raw, error="unclosed <tool_call> tag"))
            continue
        calls.append(_parse_json_call(raw, body.strip()))
    return tuple(calls)


def _parse_json_call(raw: str, body: str) -> ToolCall:
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCall(raw=raw, error=f"tool call is not valid JSON: {e.msg} at column {e.colno}")
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        return ToolCall(raw=raw, error='tool call must be a JSON object with a string "name"')
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            return ToolCall(raw=raw, name=payload["name"], error=f"arguments are not valid JSON: {e.msg}")
    if not isinstance(arguments, dict):
        return ToolCall(raw=raw, name=payload["name"], error='"arguments" must be a JSON object')
    return ToolCall(raw=raw, name=payload["name"], arguments=arguments)


TOOL_PARSERS: dict[str, ToolCallParser] = {"none": parse_none, "hermes": parse_hermes}


def get_tool_parser(name: str) -> ToolCallParser:
    """A parser by registered name (``none``, ``hermes``) or dotted path ``pkg.module:function``."""
    if name in TOOL_PARSERS:
        return TOOL_PARSERS[name]
    module_name, sep, attr = name.partition(":")
    if not sep:
        raise ConfigError(
            f"unknown tool parser {name!r}: use one of {sorted(TOOL_PARSERS)} or 'pkg.module:function'"
        )
    try:
        return cast(ToolCallParser, getattr(importlib.import_module(module_name), attr))
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"tool parser {name!r} could not be loaded: {e}") from e
