"""SGLang's control endpoints: server info, cache flush, pause and continue.

* ``GET /get_server_info``: the server's arguments (SGLang's ``ServerArgs`` names), plus
  ``weight_version``, ``internal_states`` (one entry: ``paused``, ``num_running``,
  ``num_waiting``) and ``version`` (agentrl's).
* ``GET|POST /flush_cache``: the embedded engine keeps no KV cache between requests, so there
  is nothing to drop; the reply keeps SGLang's contract: 200 when no request is running, 400
  while some are (callers such as slime retry until it succeeds).
* ``POST /pause_generation`` ``{"mode": "abort" | "retract" | "in_place"}`` (default
  ``"abort"``; an empty body is the old, body-less form): new requests wait until
  ``/continue_generation``. ``abort`` ends the requests in flight now (they answer
  ``finish_reason`` ``abort`` with their partial tokens, as SGLang's do). ``retract`` and
  ``in_place`` let them finish on the weights they started with; SGLang would instead suspend
  them and resume them after ``continue``, possibly on new weights: agentrl never runs one
  request on two weight versions. Reply: ``{"message", "status": "ok"}``.
* ``POST /continue_generation`` ``{"torch_empty_cache": bool}`` (optional): admits the waiting
  requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import torch
from aiohttp import web

from agentrl import __version__
from agentrl.policies.base import Policy
from agentrl.serving.bodies import BadRequest, Field, bad_request, parse_body, read_json
from agentrl.serving.gate import RequestGate, abort_requests

PAUSE_MODES = ("abort", "retract", "in_place")


class ControlAPI:
    """The control handlers over ``policy``, sharing ``gate`` with ``/generate``.

    ``server_args`` is what ``/get_server_info`` reports (besides live state).
    """

    def __init__(self, policy: Policy, gate: RequestGate, server_args: Mapping[str, Any]) -> None:
        self.policy, self.gate, self.server_args = policy, gate, dict(server_args)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/get_server_info", self.server_info),
            web.get("/flush_cache", self.flush_cache), web.post("/flush_cache", self.flush_cache),
            web.post("/pause_generation", self.pause_generation),
            web.post("/continue_generation", self.continue_generation),
        ]

    async def server_info(self, _: web.Request) -> web.Response:
        state = {"paused": self.gate.paused, "num_running": len(self.gate.in_flight), "num_waiting": self.gate.waiting}
        return web.json_response({
            **self.server_args, "weight_version": str(self.policy.weight_version),
            "internal_states": [state], "version": __version__,
        })

    async def flush_cache(self, _: web.Request) -> web.Response:
        running = len(self.gate.in_flight)
        if running:
            return web.Response(status=400, text=f"Cache not flushed: {running} requests are running; retry when they finish.\n")
        return web.Response(text="Cache flushed.\n")

    async def pause_generation(self, request: web.Request) -> web.Response:
        try:
            body = parse_body(await read_json(request, endpoint="pause_generation", empty_ok=True),
                              {"mode": Field(str, "abort")}, endpoint="pause_generation")
            mode = body["mode"]
            if mode not in PAUSE_MODES:
                raise BadRequest(f"pause_generation: 'mode' must be one of {', '.join(PAUSE_MODES)}, got {mode!r}")
            if mode == "abort" and not self.policy.can_abort:
                raise BadRequest(f"pause_generation: {type(self.policy).__name__} cannot abort requests; use mode 'retract'")
        except BadRequest as e:
            return bad_request(str(e))
        self.gate.pause()
        if mode == "abort":
            await abort_requests(self.policy, list(self.gate.in_flight))
        return web.json_response({"message": f"Generation paused successfully (mode {mode}).", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        try:
            body = parse_body(await read_json(request, endpoint="continue_generation", empty_ok=True),
                              {"torch_empty_cache": Field(bool, True)}, endpoint="continue_generation")
        except BadRequest as e:
            return bad_request(str(e))
        if body["torch_empty_cache"] and torch.cuda.is_available():
            await asyncio.to_thread(torch.cuda.empty_cache)  # waits for the device: off the event loop
        self.gate.resume()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})
