"""Tool-call parsers: the policy's text in, :class:`~agentrl.envs.core.ToolCall` records out.

A parser never drops a call: text that looks like a call but does not parse still yields a
``ToolCall`` with ``error`` set, so the env can tell the model what went wrong.

Parsers are named in config (``tool_parser: hermes``, ``llama3``, ``none``; ``--tool-parser``) or
given as a dotted path to any callable of type :class:`ToolCallParser`. Every parser returns calls
in the order they appear, each with ``raw`` set to the exact text it was read from, so a caller can
remove the calls from the text (the OpenAI endpoint's message ``content``).
"""

from __future__ import annotations

import importlib
import json
import re
from typing import Protocol, cast

from agentrl.envs.core import ToolCall
from agentrl.errors import ConfigError


class ToolCallParser(Protocol):
    """``parser(text) -> calls``: every call in ``text``, malformed ones with ``error`` set."""

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


_PYTHON_TAG = "<|python_tag|>"


def parse_llama3(text: str) -> tuple[ToolCall, ...]:
    """Llama 3.1+ JSON tool calls: the turn is one or more ``{"name": ..., "parameters": {...}}``
    objects (``"arguments"`` is read too), separated by ``;``, optionally after ``<|python_tag|>``.

    Only a turn that starts with ``{`` (after the tag and whitespace) holds calls; prose is not
    a call. Text that starts like a call but is not a JSON object with a string ``name`` (a turn
    cut by its length limit, say) gives one call with ``error``.
    """
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].lstrip()
    if not body.startswith("{"):
        return ()
    decoder, at = json.JSONDecoder(), 0
    calls: list[ToolCall] = []
    while at < len(body):
        try:
            payload, end = decoder.raw_decode(body, at)
        except json.JSONDecodeError as e:
            return (*calls, ToolCall(raw=body[at:], error=f"tool call is not valid JSON: {e.msg} at column {e.colno}"))
        raw = body[at:end]
        if isinstance(payload, dict) and "parameters" in payload and "arguments" not in payload:
            payload = {"name": payload.get("name"), "arguments": payload["parameters"]}
        calls.append(_parse_json_call(raw, json.dumps(payload)))
        rest = body[end:].lstrip().removeprefix(";").lstrip()
        if not rest.startswith("{"):  # prose after the calls is not a call
            break
        at = len(body) - len(rest)
    return tuple(calls)


TOOL_PARSERS: dict[str, ToolCallParser] = {"none": parse_none, "hermes": parse_hermes, "llama3": parse_llama3}


def get_tool_parser(name: str) -> ToolCallParser:
    """A parser by registered name (``none``, ``hermes``, ``llama3``) or dotted path ``pkg.module:function``."""
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
