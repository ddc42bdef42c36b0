"""SGLang's native HTTP API (the subset RL rollouts use) over any :class:`~agentrl.policies.Policy`.

Field names, defaults and response shapes follow SGLang's ``GenerateReqInput`` and
``tokenizer_manager`` (see ``docs/integration-reference.md``), so code written against an SGLang
server or sglang-router (slime's generate functions, for one) runs against the embedded engine:

* ``POST /generate``: ``input_ids`` or ``text`` (one, or a list for a batch), ``sampling_params``,
  ``return_logprob``, ``rid``. Each item comes back as ``{"text", "output_ids", "meta_info"}``
  with ``finish_reason`` ``{"type": "stop", "matched": ...}``, ``{"type": "length", "length": N}``
  or ``{"type": "abort", ...}``, and ``output_token_logprobs`` as ``[logprob, token_id, None]``.
  The body is checked whole before anything is generated
  (:mod:`agentrl.serving.generate_request`): a bad one gets a 400 naming the field. The items of a
  batch run together; the first that fails cancels the others (their engine rows are dropped) and
  the request answers 500 with its reason.
* ``GET /health``, ``GET /health_generate`` (a one-token generation), ``GET /get_model_info``,
  ``GET /get_weight_version``, ``POST /abort_request`` ``{"rid"}`` or ``{"abort_all": true}``.
* The control endpoints (:mod:`agentrl.serving.control`: server info, cache flush, pause and
  continue) and the weight updates (:mod:`agentrl.serving.weights`: from disk, over a
  ``torch.distributed`` group). While generation is paused or weights load, new ``/generate``
  requests wait (:class:`~agentrl.serving.gate.RequestGate`).

Errors are SGLang's ``{"error": {"message": ...}}``.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from transformers import PreTrainedTokenizerBase

from agentrl.errors import PolicyError
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.serving.app_server import AppServer
from agentrl.serving.bodies import BadRequest, Field, bad_request, parse_body, read_json
from agentrl.serving.control import ControlAPI
from agentrl.serving.gate import RequestGate, abort_requests
from agentrl.serving.generate_request import GenerateItem, GenerateRequest, parse_generate
from agentrl.serving.weights import WeightsAPI

ABORT_FIELDS = {"rid": Field(str, None), "abort_all": Field(bool, False)}


def generation_to_sglang(
    generation: Generation, item: GenerateItem, *, tokenizer: PreTrainedTokenizerBase, return_logprob: bool,
) -> dict[str, Any]:
    """One ``/generate`` response item, shaped as SGLang's."""
    if generation.finish_reason == "stop":
        finish: dict[str, Any] = {"type": "stop", "matched": generation.matched_stop}
    elif generation.finish_reason == "length":
        finish = {"type": "length", "length": len(generation.token_ids)}
    else:
        finish = {"type": "abort", "message": "aborted", "status_code": 200, "err_type": None}
    text = str(tokenizer.decode(generation.token_ids, skip_special_tokens=item.skip_special_tokens))
    matched = generation.matched_stop
    if isinstance(matched, str) and not item.no_stop_trim and text.endswith(matched):
        text = text[: -len(matched)]
    meta: dict[str, Any] = {
        "id": item.rid, "finish_reason": finish, "prompt_tokens": len(item.input_ids),
        "completion_tokens": len(generation.token_ids), "cached_tokens": 0,
        "weight_version": str(generation.weight_version),
    }
    if return_logprob:
        meta["output_token_logprobs"] = [[lp, tok, None] for lp, tok in zip(generation.logprobs, generation.token_ids)]
    return {"text": text, "output_ids": list(generation.token_ids), "meta_info": meta}


class SGLangAPI:
    """The HTTP handlers. ``model_path`` is what ``/get_model_info`` reports; ``server_args``
    what ``/get_server_info`` does (SGLang's ``ServerArgs`` names; by default the model path and
    ``tp_size`` 1)."""

    def __init__(self, policy: Policy, tokenizer: PreTrainedTokenizerBase, model_path: str = "",
                 server_args: Mapping[str, Any] | None = None) -> None:
        self.policy, self.tokenizer, self.model_path = policy, tokenizer, model_path
        self._ids = itertools.count()
        self.gate = RequestGate()
        defaults = {"model_path": model_path, "tokenizer_path": model_path, "tp_size": 1, "dp_size": 1}
        self.control = ControlAPI(policy, self.gate, server_args if server_args is not None else defaults)
        self.weights = WeightsAPI(policy, self.gate)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes([
            web.post("/generate", self.generate), web.put("/generate", self.generate),
            web.get("/health", self.health), web.get("/health_generate", self.health_generate),
            web.get("/get_model_info", self.model_info), web.get("/get_weight_version", self.weight_version),
            web.post("/abort_request", self.abort_request),
            *self.control.routes(), *self.weights.routes(),
        ])
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_shutdown(self, _: web.Application) -> None:
        self.weights.shutdown()

    async def _on_cleanup(self, _: web.Application) -> None:
        await self.weights.aclose()

    async def generate(self, request: web.Request) -> web.Response:
        try:
            parsed = parse_generate(await read_json(request, endpoint="generate"), tokenizer=self.tokenizer,
                                    context_length=self.policy.context_length, new_rid=lambda: f"agentrl-{next(self._ids)}")
            with self.gate.claimed([item.rid for item in parsed.items]):
                outputs = await self._answer(parsed)
        except BadRequest as e:
            return bad_request(str(e))
        except PolicyError as e:
            return web.json_response({"error": {"message": str(e)}}, status=500)
        return web.json_response(outputs if parsed.batched else outputs[0])

    async def _answer(self, parsed: GenerateRequest) -> list[dict[str, Any]]:
        """Every item's answer, generated together. The first item that fails cancels the
        others (a cancelled ``generate`` drops its engine row) and its error is raised."""
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._one(item, return_logprob=parsed.return_logprob)) for item in parsed.items]
        except* PolicyError as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _one(self, item: GenerateItem, *, return_logprob: bool) -> dict[str, Any]:
        started = time.perf_counter()
        async with self.gate.admit(item.rid):
            generation = await self.policy.generate(item.input_ids, item.sampling, rid=item.rid)
        output = generation_to_sglang(generation, item, tokenizer=self.tokenizer, return_logprob=return_logprob)
        output["meta_info"]["e2e_latency"] = time.perf_counter() - started  # seconds from admission to answer, as SGLang's
        return output

    async def health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def health_generate(self, _: web.Request) -> web.Response:
        ids = self.tokenizer.encode("ping", add_special_tokens=False) or [0]
        try:
            await asyncio.wait_for(self.policy.generate(ids, SamplingParams(max_new_tokens=1), rid=f"health-{next(self._ids)}"), 20)
        except (PolicyError, TimeoutError) as e:
            return web.Response(status=503, text=str(e))
        return web.Response(text="")

    async def model_info(self, _: web.Request) -> web.Response:
        return web.json_response({"model_path": self.model_path, "tokenizer_path": self.model_path, "is_generation": True,
                                  "preferred_sampling_params": None, "weight_version": str(self.policy.weight_version)})

    async def weight_version(self, _: web.Request) -> web.Response:
        return web.json_response({"weight_version": str(self.policy.weight_version)})

    async def abort_request(self, request: web.Request) -> web.Response:
        """``{"rid"}`` aborts that request, ``{"abort_all": true}`` every request in flight."""
        endpoint = "abort_request"
        try:
            body = parse_body(await read_json(request, endpoint=endpoint), ABORT_FIELDS, endpoint=endpoint)
            if body["rid"] is None and not body["abort_all"]:
                raise BadRequest(f"{endpoint}: give 'rid' or 'abort_all': true")
            if not self.policy.can_abort:
                raise BadRequest(f"{endpoint}: {type(self.policy).__name__} cannot abort requests")
        except BadRequest as e:
            return bad_request(str(e))
        await abort_requests(self.policy, list(self.gate.in_flight) if body["abort_all"] else [body["rid"]])
        return web.Response(text="")


class SGLangServer(AppServer):
    """Serves :class:`SGLangAPI` on ``host:port`` for the life of an ``async with`` block (see
    :class:`~agentrl.serving.app_server.AppServer`). ``extra_routes`` are served beside SGLang's
    (``agentrl serve --enable-openai-api`` mounts the OpenAI endpoint's there)."""

    def __init__(self, policy: Policy, tokenizer: PreTrainedTokenizerBase, *, model_path: str = "", host: str = "127.0.0.1",
                 port: int = 0, server_args: Mapping[str, Any] | None = None, extra_routes: Sequence[web.RouteDef] = ()) -> None:
        super().__init__(host=host, port=port)
        self.api = SGLangAPI(policy, tokenizer, model_path, server_args)
        self.extra_routes = list(extra_routes)

    def application(self) -> web.Application:
        app = self.api.app()
        app.add_routes(self.extra_routes)
        return app

    async def start(self) -> None:
        """Listen on ``host:port``; ``/get_server_info`` then reports the bound port.

        Raises:
            OSError: the address cannot be bound (in use, unknown host); nothing is left open.
        """
        await super().start()
        if "port" in self.api.control.server_args:
            self.api.control.server_args["port"] = self.port
