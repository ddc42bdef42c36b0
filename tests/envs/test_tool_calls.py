"""Tool-call parsing keeps malformed calls, with the reason, instead of dropping them."""

from __future__ import annotations

import pytest

from agentrl.envs.core import ToolCall
from agentrl.envs.tool_calls import get_tool_parser, parse_hermes
from agentrl.errors import ConfigError


def test_hermes_calls_parse_with_raw_text_kept():
    text = 'x <tool_call>{"name": "search", "arguments": {"q": "a"}}</tool_call> y <tool_call>{"name": "f", "arguments": "{\\"k\\": 1}"}</tool_call>'
    calls = parse_hermes(text)
    assert calls[0] == ToolCall(raw='<tool_call>{"name": "search", "arguments": {"q": "a"}}</tool_call>', name="search", arguments={"q": "a"})
    assert (calls[1].name, calls[1].arguments, calls[1].error) == ("f", {"k": 1}, None)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("<tool_call>{not json</tool_call>", "tool call is not valid JSON: Expecting property name enclosed in double quotes at column 2"),
        ('<tool_call>{"arguments": {}}</tool_call>', 'tool call must be a JSON object with a string "name"'),
        ('<tool_call>{"name": "f", "arguments": [1]}</tool_call>', '"arguments" must be a JSON object'),
        ('<tool_call>{"name": "f", "arguments": "{bad"}</tool_call>', "arguments are not valid JSON: Expecting property name enclosed in double quotes"),
        ('<tool_call>{"name": "se', "unclosed <tool_call> tag"),
    ],
)
def test_malformed_calls_are_kept_with_their_error(text, error):
    (call,) = parse_hermes(text)
    assert call.error == error and call.raw.startswith("<tool_call>")


def test_parser_lookup():
    assert get_tool_parser("hermes") is parse_hermes
    assert get_tool_parser("agentrl.envs.tool_calls:parse_none")("<tool_call>{}</tool_call>") == ()
    with pytest.raises(ConfigError, match="unknown tool parser 'xml'"):
        get_tool_parser("xml")
    with pytest.raises(ConfigError, match="could not be loaded"):
        get_tool_parser("agentrl.nope:f")


def test_llama3_calls_parse_with_parameters_or_arguments_and_separators():
    from agentrl.envs.tool_calls import parse_llama3

    text = '<|python_tag|>{"name": "add", "parameters": {"a": 1}}; {"name": "f", "arguments": {"k": "v"}} and some prose'
    first, second = parse_llama3(text)
    assert first == ToolCall(raw='{"name": "add", "parameters": {"a": 1}}', name="add", arguments={"a": 1})
    assert (second.name, second.arguments, second.error) == ("f", {"k": "v"}, None)
    assert parse_llama3("The answer is {5}.") == ()
    [cut] = parse_llama3('{"name": "add", "parameters": {"a": 1')
    assert cut.name is None and cut.error.startswith("tool call is not valid JSON")
    assert get_tool_parser("llama3") is parse_llama3
