"""An OpenAI-compatible endpoint over any :class:`~agentrl.policies.Policy`, with recorded sessions.

Routes (all answer errors in OpenAI's shape, see :class:`~agentrl.serving.openai_protocol.OpenAIError`):

* ``POST /v1/chat/completions``: a chat completion, whole or streamed (server-sent events,
  ``data: {chunk}`` lines and ``data: [DONE]``), nothing recorded. The policy answers a turn at
  once, so a stream carries each choice's content and tool calls in one chunk each.
* ``GET /v1/models``: the one model served.
* ``POST /sessions`` (body ``{}`` or ``{"id": str}``): opens a recorded session; answers 201 with
  ``{"id", "base_url"}``. ``/sessions/{id}/v1/chat/completions`` and ``/sessions/{id}/v1/models``
  serve it: point a client's ``base_url`` there and every request is captured token-exact
  (:mod:`agentrl.serving.openai_session`).
* ``GET /sessions/{id}`` the session's record so far; ``DELETE /sessions/{id}`` ends it and
  answers its record.

:class:`OpenAIAPI` holds the sessions and answers requests independently of the HTTP framework
(:meth:`OpenAIAPI.answer`); :class:`OpenAIServer` serves it on a port, and ``agentrl serve
--enable-openai-api`` mounts its routes beside SGLang's native API.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agentrl.envs.tool_calls import ToolCallParser, parse_hermes
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.rollout.conversation import ChatRenderer
from agentrl.serving.app_server import AppServer
from agentrl.serving.bodies import BadRequest, read_json
from agentrl.serving.openai_protocol import OpenAIError, completion_body, parse_chat_request, stream_chunks
from agentrl.serving.openai_session import Generate, Session, SessionConfig

SESSION_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class Answer:
    """A chat completion answer: one JSON object, or the chunks of a stream."""

    body: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] | None = None


class OpenAIAPI:
    """The endpoint's state and handlers. See the module docstring.

    Args:
        generate: samples every turn (:func:`policy_generate` of a policy).
        renderer: the chat template (its tokenizer spells log-prob tokens too).
        model_name: what ``/v1/models`` lists.
        parser: reads tool calls from sampled text (``--tool-parser``).
        config: sampling defaults and limits of every session (give ``max_context_len`` the
            policy's context length).
    """

    def __init__(self, generate: Generate, renderer: ChatRenderer, *, model_name: str = "agentrl", parser: ToolCallParser = parse_hermes,
                 config: SessionConfig | None = None) -> None:
        self.generate, self.renderer, self.model_name, self.parser = generate, renderer, model_name, parser
        self.config = config or SessionConfig()
        self.sessions: dict[str, Session] = {}
        self._requests = itertools.count()

    def open_session(self, session_id: str | None = None, *, generate: Generate | None = None, config: SessionConfig | None = None) -> Session:
        """Open a recorded session (a fresh id when ``session_id`` is ``None``); ``generate`` and
        ``config`` replace the endpoint's policy and settings for it (a training episode's).

        Raises:
            OpenAIError: 400 for a malformed or taken id.
        """
        session_id = session_id or uuid.uuid4().hex
        if not SESSION_ID.fullmatch(session_id):
            raise OpenAIError(400, f"session id {session_id!r:.140} must be 1-128 letters, digits, '_', '.' or '-'", param="id")
        if session_id in self.sessions:
            raise OpenAIError(400, f"session {session_id!r} exists already", param="id")
        session = Session(session_id, self.renderer, self.parser, generate or self.generate, config or self.config)
        self.sessions[session_id] = session
        return session

    def close_session(self, session_id: str) -> Session:
        """Remove a session (its requests get 404 from now on) and return it with its record.

        Raises:
            OpenAIError: 404 for an unknown id.
        """
        return self.sessions.pop(session_id, None) or self._unknown(session_id)

    def session(self, session_id: str) -> Session:
        """The open session ``session_id``.

        Raises:
            OpenAIError: 404 for an unknown id.
        """
        return self.sessions.get(session_id) or self._unknown(session_id)

    def _unknown(self, session_id: str) -> Session:
        raise OpenAIError(404, f"no session {session_id!r:.140}: open one with POST /sessions (or it was closed)")

    async def answer(self, session: Session | None, body: Any) -> Answer:
        """Answer one ``/v1/chat/completions`` body, in ``session`` or (``None``) unrecorded.

        Raises:
            OpenAIError: the body is invalid or the session refused the request.
        """
        request = parse_chat_request(body)
        number = next(self._requests)
        served = session or Session(f"chatcmpl-{number}", self.renderer, self.parser, self.generate, self.config)
        choices, prompt_tokens = await served.complete(request)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        decode = self.renderer.decode
        if request.stream:
            return Answer(chunks=stream_chunks(completion_id, request.model, choices, prompt_tokens, logprobs=request.logprobs, decode=decode,
                                               include_usage=request.include_usage))
        return Answer(body=completion_body(completion_id, request.model, choices, prompt_tokens, logprobs=request.logprobs, decode=decode))

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "agentrl"}]}

    # ------------------------------------------------------------------ HTTP
    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self._chat), web.get("/v1/models", self._models),
            web.post("/sessions", self._open), web.get("/sessions/{sid}", self._record), web.delete("/sessions/{sid}", self._close),
            web.post("/sessions/{sid}/v1/chat/completions", self._chat), web.get("/sessions/{sid}/v1/models", self._models),
        ]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes(self.routes())
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            sid = request.match_info.get("sid")
            session = None if sid is None else self.session(sid)
            answer = await self.answer(session, await _json(request))
        except OpenAIError as e:
            return error_response(e)
        if answer.chunks is None:
            return web.json_response(answer.body)
        return await _stream(request, answer.chunks)

    async def _models(self, request: web.Request) -> web.Response:
        sid = request.match_info.get("sid")
        try:
            if sid is not None:
                self.session(sid)
        except OpenAIError as e:
            return error_response(e)
        return web.json_response(self.models())

    async def _open(self, request: web.Request) -> web.Response:
        try:
            body = await _json(request, empty_ok=True)
            if not isinstance(body, dict) or set(body) - {"id"} or not isinstance(body.get("id", ""), str):
                raise OpenAIError(400, f"POST /sessions takes {{}} or {{'id': str}}, got {body!r:.140}")
            session = self.open_session(body.get("id"))
        except OpenAIError as e:
            return error_response(e)
        return web.json_response({"id": session.id, "base_url": f"/sessions/{session.id}/v1"}, status=201)

    async def _record(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.session(request.match_info["sid"]).record())
        except OpenAIError as e:
            return error_response(e)

    async def _close(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(self.close_session(request.match_info["sid"]).record())
        except OpenAIError as e:
            return error_response(e)


async def _json(request: web.Request, *, empty_ok: bool = False) -> Any:
    try:
        return await read_json(request, endpoint=request.path, empty_ok=empty_ok)
    except BadRequest as e:
        raise OpenAIError(400, str(e)) from None


async def _stream(request: web.Request, chunks: list[dict[str, Any]]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def error_response(error: OpenAIError) -> web.Response:
    """``error`` as OpenAI answers it."""
    return web.json_response(error.body(), status=error.status)


def policy_generate(policy: Policy) -> Generate:
    """``policy.generate`` as the endpoint calls it."""

    async def generate(input_ids: Sequence[int], sampling: SamplingParams, rid: str) -> Generation:
        return await policy.generate(input_ids, sampling, rid=rid)

    return generate


class OpenAIServer(AppServer):
    """Serves an :class:`OpenAIAPI` on ``host:port`` for the life of an ``async with`` block (see
    :class:`~agentrl.serving.app_server.AppServer`); :meth:`base_url` is a client's ``base_url``
    (of a session, or unrecorded)."""

    def __init__(self, api: OpenAIAPI, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.api = api

    def application(self) -> web.Application:
        return self.api.app()

    def base_url(self, session: Session | None = None) -> str:
        """What an OpenAI client's ``base_url`` should be: the session's, or the unrecorded ``/v1``."""
        return f"{self.url}/v1" if session is None else f"{self.url}/sessions/{session.id}/v1"
