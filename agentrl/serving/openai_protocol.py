"""OpenAI's Chat Completions wire format: requests checked at the edge, messages turned into what a
chat template takes, and responses (whole or as stream chunks) built from sampled tokens.

Shapes follow the ``openai`` Python SDK's types (``ChatCompletion``, ``ChatCompletionChunk``,
``ChatCompletionMessageParam``). What this server cannot honour is refused with a 400 naming the
field, never silently ignored where it would change the tokens: ``tool_choice`` ``"required"`` or a
named function (no constrained decoding), ``top_logprobs`` > 0 (the policy reports only the
sampled token's log-prob), non-text content parts, penalties, ``logit_bias`` and a
``response_format`` other than text. Fields that do not change generation (``user``,
``metadata``, ``store``, ``parallel_tool_calls`` ...) are accepted and have no effect.

Messages reach the chat template as ``{"role", "content": str}`` (``developer`` becomes
``system``; text parts are joined with newlines); an assistant message keeps its ``tool_calls``
with ``arguments`` parsed to an object (what Hugging Face templates expect), a tool message its
``tool_call_id``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from agentrl.envs.core import Message, ToolCall
from agentrl.policies.base import SEED_MAX, SEED_MIN, Generation
from agentrl.serving.bodies import BadRequest, Field, parse_body

ROLES = ("system", "developer", "user", "assistant", "tool")

CHAT_FIELDS: dict[str, Field] = {
    "model": Field(str), "messages": Field(list, items=dict),
    "tools": Field(list, None, items=dict), "tool_choice": Field((str, dict), "auto"),
    "parallel_tool_calls": Field(bool, True),
    "stop": Field((str, list), None), "max_tokens": Field(int, None), "max_completion_tokens": Field(int, None),
    "temperature": Field(float, None), "top_p": Field(float, None), "seed": Field(int, None), "n": Field(int, 1),
    "logprobs": Field(bool, False), "top_logprobs": Field(int, 0, neutral=True),
    "stream": Field(bool, False), "stream_options": Field(dict, None),
    "frequency_penalty": Field(float, 0, neutral=True), "presence_penalty": Field(float, 0, neutral=True),
    "logit_bias": Field(dict, None, neutral=True), "response_format": Field(dict, None),
    "user": Field(str, None), "metadata": Field(dict, None), "store": Field(bool, None),
    "safety_identifier": Field(str, None), "prompt_cache_key": Field(str, None), "service_tier": Field(str, None),
}
"""Every field ``/v1/chat/completions`` accepts; any other is refused with a 400."""

MAX_N = 64
"""Most choices one request may ask for."""


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

    Attributes:
        status: the HTTP status (400 bad input or a session that cannot go on, 404 unknown
            session or path, 500 the engine failed, 503 the request was aborted).
        param: the request field at fault, or ``None``.
        code: a machine-readable reason, e.g. ``context_length_exceeded``, or ``None``.
    """

    TYPES: ClassVar[dict[int, str]] = {400: "invalid_request_error", 404: "not_found_error", 500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": self.TYPES.get(self.status, "server_error"), "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked ``/v1/chat/completions`` body.

    Attributes:
        model: the model name the client asked for (echoed back; one model is served).
        messages: the conversation as sent, each checked (see :func:`check_messages`).
        tools: tool schemas (``{"type": "function", "function": {...}}``) for the chat template.
        parse_tools: whether tool calls are parsed from the text (``tool_choice`` ``"auto"``);
            with ``"none"`` the text comes back as content.
        max_tokens: the turn's token budget (``max_completion_tokens`` over ``max_tokens``), or
            ``None`` for the server's default.
        stop: strings that end the turn (not included in the returned content).
        temperature, top_p, seed: sampling, ``None`` where the client left it to the server.
        n: how many choices to sample.
        logprobs: return each sampled token's log-prob.
        stream, include_usage: answer as server-sent events; add a usage chunk at the end.
    """

    model: str
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    parse_tools: bool = True
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    n: int = 1
    logprobs: bool = False
    stream: bool = False
    include_usage: bool = False


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a request body; every rule OpenAI's API states for these fields is applied here.

    Raises:
        OpenAIError: 400 naming the field and what it must be.
    """
    try:
        values = parse_body(body, CHAT_FIELDS, endpoint="chat/completions")
    except BadRequest as e:
        raise OpenAIError(400, str(e)) from None
    check_messages(values["messages"])
    _check_ranges(values)
    return ChatRequest(
        model=values["model"], messages=values["messages"], tools=_tools(values["tools"]),
        parse_tools=_tool_choice(values["tool_choice"]) == "auto",
        max_tokens=values["max_completion_tokens"] if values["max_completion_tokens"] is not None else values["max_tokens"],
        stop=_stops(values["stop"]), temperature=values["temperature"], top_p=values["top_p"], seed=values["seed"], n=values["n"],
        logprobs=values["logprobs"], stream=values["stream"], include_usage=_include_usage(values["stream_options"], values["stream"]),
    )


def _check_ranges(values: dict[str, Any]) -> None:
    for name, ok, expected in (
        ("max_tokens", values["max_tokens"] is None or values["max_tokens"] >= 1, "an integer >= 1"),
        ("max_completion_tokens", values["max_completion_tokens"] is None or values["max_completion_tokens"] >= 1, "an integer >= 1"),
        ("temperature", values["temperature"] is None or (math.isfinite(values["temperature"]) and 0 <= values["temperature"] <= 2), "a number in [0, 2]"),
        ("top_p", values["top_p"] is None or (math.isfinite(values["top_p"]) and 0 < values["top_p"] <= 1), "a number in (0, 1]"),
        ("seed", values["seed"] is None or SEED_MIN <= values["seed"] <= SEED_MAX, "a signed 64-bit integer"),
        ("n", 1 <= values["n"] <= MAX_N, f"an integer in [1, {MAX_N}]"),
    ):
        if not ok:
            raise OpenAIError(400, f"'{name}' must be {expected}, got {values[name]!r:.80}", param=name)
    response_format = values["response_format"]
    if response_format is not None and response_format.get("type") != "text":
        raise OpenAIError(400, f"'response_format' {response_format.get('type')!r} is not supported (no constrained decoding); only 'text'",
                          param="response_format")


def _tool_choice(choice: str | dict[str, Any]) -> str:
    if choice in ("auto", "none"):
        return str(choice)
    raise OpenAIError(400, f"'tool_choice' {choice!r:.80} is not supported: this server cannot force a tool call (no constrained "
                      "decoding); use 'auto' or 'none'", param="tool_choice")


def _tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    for k, tool in enumerate(tools or []):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise OpenAIError(400, f"'tools[{k}]' must be {{'type': 'function', 'function': {{'name': str, ...}}}}, got {tool!r:.120}", param="tools")
    return tools or None


def _stops(stop: str | list[Any] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) and s for s in stops):
        raise OpenAIError(400, f"'stop' must be a non-empty string or a list of them, got {stop!r:.80}", param="stop")
    return tuple(stops)


def _include_usage(options: dict[str, Any] | None, stream: bool) -> bool:
    include = (options or {}).get("include_usage", False)
    if not isinstance(include, bool):
        raise OpenAIError(400, f"'stream_options.include_usage' must be a boolean, got {include!r:.40}", param="stream_options")
    return include and stream


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Refuse a conversation a chat template cannot take.

    Raises:
        OpenAIError: 400 naming the message: empty list, unknown role, content that is not text,
            a malformed tool call, or a message other than an assistant's without content.
    """
    if not messages:
        raise OpenAIError(400, "'messages' must hold at least one message", param="messages")
    for k, message in enumerate(messages):
        where = f"messages[{k}]"
        if message.get("role") not in ROLES:
            raise OpenAIError(400, f"{where}: 'role' must be one of {', '.join(ROLES)}, got {message.get('role')!r:.40}", param="messages")
        content_text(message.get("content"), where)
        if message["role"] == "assistant":
            _check_tool_calls(message.get("tool_calls"), where)
        elif message.get("content") is None:
            raise OpenAIError(400, f"{where}: a {message['role']} message needs 'content'", param="messages")


def _check_tool_calls(calls: Any, where: str) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise OpenAIError(400, f"{where}: 'tool_calls' must be a list", param="messages")
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not isinstance(function.get("arguments"), str):
            raise OpenAIError(400, f"{where}: each tool call must be {{'id', 'type': 'function', 'function': {{'name': str, 'arguments': str}}}}, "
                              f"got {call!r:.120}", param="messages")


def content_text(content: Any, where: str) -> str:
    """The text of a message's content: a string, ``None`` (``""``), or text parts joined by newlines.

    Raises:
        OpenAIError: 400 for any other content (images, audio, files).
    """
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "\n".join(p["text"] for p in content)
    raise OpenAIError(400, f"{where}: 'content' must be a string or a list of text parts ({{'type': 'text', 'text': str}}); "
                      "this server serves a text-only model", param="messages")


def template_message(message: dict[str, Any]) -> Message:
    """One checked client message as the chat template takes it (see the module docstring)."""
    role = "system" if message["role"] == "developer" else message["role"]
    out: Message = {"role": role, "content": content_text(message.get("content"), "message")}
    if role == "assistant" and message.get("tool_calls"):
        out["tool_calls"] = [{"type": "function", "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}}
                             for c in message["tool_calls"]]
    if role == "tool" and isinstance(message.get("tool_call_id"), str):
        out["tool_call_id"] = message["tool_call_id"]
    return out


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def assistant_key(message: dict[str, Any]) -> str:
    """What identifies an assistant message the client sends back: its text and its calls (ids,
    names, arguments compared as parsed JSON), insensitive to how the client re-serialised them."""
    calls = [(c.get("id"), c["function"]["name"], _arguments(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
    return json.dumps([content_text(message.get("content"), "message"), calls], sort_keys=True)


@dataclass(frozen=True)
class Choice:
    """One sampled answer, as the client gets it and as the session records it.

    Attributes:
        generation: the policy's output, verbatim.
        raw: the whole assistant text the conversation records (a prefill, then the decoded
            sampled tokens with special tokens removed), as :class:`TokenConversation` keeps it.
        message: the OpenAI assistant message: ``content`` (the text without the matched stop
            string and without parsed tool calls; ``None`` when empty) and ``tool_calls``.
        finish_reason: ``stop``, ``length`` or ``tool_calls``.
    """

    generation: Generation
    raw: str
    message: dict[str, Any]
    finish_reason: str


def make_choice(generation: Generation, raw: str, calls: tuple[ToolCall, ...], *, call_id: str) -> Choice:
    """The choice of ``generation``: ``calls`` that parsed become ``tool_calls`` (ids
    ``{call_id}_{k}``) and leave the content; malformed ones stay in the content as text."""
    text = raw
    if generation.finish_reason == "stop" and isinstance(generation.matched_stop, str):
        text = text.removesuffix(generation.matched_stop)
    parsed = [c for c in calls if c.error is None and c.name is not None]
    for call in parsed:
        text = text.replace(call.raw, "", 1)
    tool_calls = [{"id": f"{call_id}_{k}", "type": "function", "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                  for k, c in enumerate(parsed)]
    message: dict[str, Any] = {"role": "assistant", "content": text.strip() if parsed else text}
    if parsed:
        message["tool_calls"] = tool_calls
        message["content"] = message["content"] or None
    finish = "tool_calls" if parsed and generation.finish_reason == "stop" else generation.finish_reason
    return Choice(generation, raw, message, finish)


def completion_body(completion_id: str, model: str, choices: list[Choice], prompt_tokens: int, *, logprobs: bool, decode: Any) -> dict[str, Any]:
    """A ``ChatCompletion`` object. ``decode(ids)`` spells a token for the log-probs."""
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model, "system_fingerprint": None,
        "choices": [{"index": i, "message": {**c.message, "refusal": None}, "finish_reason": c.finish_reason,
                     "logprobs": _logprobs(c.generation, decode) if logprobs else None} for i, c in enumerate(choices)],
        "usage": usage(choices, prompt_tokens),
    }


def usage(choices: list[Choice], prompt_tokens: int) -> dict[str, int]:
    completion = sum(len(c.generation.token_ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


def _logprobs(generation: Generation, decode: Any) -> dict[str, Any]:
    tokens = []
    for token_id, logprob in zip(generation.token_ids, generation.logprobs):
        token = str(decode([token_id]))
        tokens.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []})
    return {"content": tokens, "refusal": None}


def stream_chunks(completion_id: str, model: str, choices: list[Choice], prompt_tokens: int, *, logprobs: bool, decode: Any,
                  include_usage: bool) -> list[dict[str, Any]]:
    """The ``ChatCompletionChunk`` objects of a streamed answer: per choice the role, the content,
    each tool call and the finish reason; then the usage chunk when asked for."""
    created = int(time.time())

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, lps: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model, "system_fingerprint": None,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": lps}]}

    chunks = []
    for i, c in enumerate(choices):
        chunks.append(chunk(i, {"role": "assistant", "content": ""}))
        if c.message.get("content"):
            chunks.append(chunk(i, {"content": c.message["content"]}, lps=_logprobs(c.generation, decode) if logprobs else None))
        for k, call in enumerate(c.message.get("tool_calls", [])):
            chunks.append(chunk(i, {"tool_calls": [{"index": k, **call}]}))
        chunks.append(chunk(i, {}, c.finish_reason))
    if include_usage:
        chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                       "usage": usage(choices, prompt_tokens)})
    return chunks
