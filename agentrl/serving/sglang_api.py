"""SGLang's native HTTP API (the subset RL rollouts use) over any :class:`~agentrl.policies.Policy`.

Field names, defaults and response shapes follow SGLang's ``GenerateReqInput`` and
``tokenizer_manager`` (see ``docs/integration-reference.md``), so code written against an SGLang
server or sglang-router (slime's generate functions, for one) runs against the embedded engine:

* ``POST /generate``: ``input_ids`` or ``text`` (one, or a list for a batch), ``sampling_params``,
  ``return_logprob``, ``rid``. Each item comes back as ``{"text", "output_ids", "meta_info"}``
  with ``finish_reason`` ``{"type": "stop", "matched": ...}``, ``{"type": "length", "length": N}``
  or ``{"type": "abort", ...}``, and ``output_token_logprobs`` as ``[logprob, token_id, None]``.
* ``GET /health``, ``GET /health_generate`` (a one-token generation), ``GET /get_model_info``,
  ``GET /get_weight_version``, ``POST /abort_request``.
* The control endpoints (:mod:`agentrl.serving.control`: server info, cache flush, pause and
  continue) and the weight updates (:mod:`agentrl.serving.weights`: from disk, over a
  ``torch.distributed`` group). While generation is paused or weights load, new ``/generate``
  requests wait (:class:`~agentrl.serving.gate.RequestGate`).

Sampling options the policy cannot honour (penalties, ``min_p``, ``n`` > 1, constrained
decoding, streaming) are refused with a 400 that names them, never silently ignored.
Detokenisation-only options (``skip_special_tokens``, ``no_stop_trim``,
``spaces_between_special_tokens``) are honoured or harmless.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from typing import Any, Self

from aiohttp import web
from transformers import PreTrainedTokenizerBase

from agentrl.errors import PolicyError
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.serving.bodies import BadRequest
from agentrl.serving.control import ControlAPI
from agentrl.serving.gate import RequestGate
from agentrl.serving.weights import WeightsAPI

SAMPLING_KEYS = {"max_new_tokens", "temperature", "top_p", "top_k", "stop", "stop_token_ids", "ignore_eos", "sampling_seed"}
TEXT_ONLY_KEYS = {"skip_special_tokens", "no_stop_trim", "spaces_between_special_tokens", "stream_interval", "custom_params"}
NEUTRAL_VALUES = {"min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0, "min_new_tokens": 0, "n": 1}
UNSUPPORTED_REQUEST_KEYS = ("stream", "input_embeds", "lora_path", "return_hidden_states", "image_data")


def sampling_from_sglang(params: dict[str, Any]) -> SamplingParams:
    """:class:`SamplingParams` from SGLang's ``sampling_params`` dict (SGLang's defaults)."""
    if not isinstance(params, dict):
        raise BadRequest(f"sampling_params must be an object, got {type(params).__name__}")
    refused = sorted(
        k for k, v in params.items()
        if k not in SAMPLING_KEYS | TEXT_ONLY_KEYS and v is not None and not (k in NEUTRAL_VALUES and v == NEUTRAL_VALUES[k])
    )
    if refused:
        raise BadRequest(f"sampling_params {', '.join(refused)} are not supported by this server")
    stop = params.get("stop") or ()
    try:
        return SamplingParams(
            max_new_tokens=int(params.get("max_new_tokens", 128)),
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            top_k=int(params.get("top_k", -1)),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            stop_token_ids=tuple(params.get("stop_token_ids") or ()),
            ignore_eos=bool(params.get("ignore_eos", False)),
            seed=params.get("sampling_seed"),
        )
    except (TypeError, ValueError) as e:
        raise BadRequest(f"sampling_params: {e}") from e


def generation_to_sglang(
    generation: Generation, *, rid: str, prompt_tokens: int, tokenizer: PreTrainedTokenizerBase,
    params: dict[str, Any], return_logprob: bool,
) -> dict[str, Any]:
    """One ``/generate`` response item, shaped as SGLang's."""
    if generation.finish_reason == "stop":
        finish: dict[str, Any] = {"type": "stop", "matched": generation.matched_stop}
    elif generation.finish_reason == "length":
        finish = {"type": "length", "length": len(generation.token_ids)}
    else:
        finish = {"type": "abort", "message": "aborted", "status_code": 200, "err_type": None}
    text = tokenizer.decode(generation.token_ids, skip_special_tokens=params.get("skip_special_tokens", True))
    matched = generation.matched_stop
    if isinstance(matched, str) and not params.get("no_stop_trim", False) and text.endswith(matched):
        text = text[: -len(matched)]
    meta: dict[str, Any] = {
        "id": rid, "finish_reason": finish, "prompt_tokens": prompt_tokens,
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
        app.on_cleanup.append(lambda _: self.weights.aclose())
        return app

    async def generate(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            items, batched = self._items(body)
        except (BadRequest, ValueError) as e:
            return web.json_response({"error": {"message": str(e)}}, status=400)
        try:
            outputs = await asyncio.gather(*(self._one(*item, return_logprob=bool(body.get("return_logprob"))) for item in items))
        except PolicyError as e:
            return web.json_response({"error": {"message": str(e)}}, status=500)
        return web.json_response(outputs if batched else outputs[0])

    def _items(self, body: dict[str, Any]) -> tuple[list[tuple[list[int], str, dict[str, Any], SamplingParams]], bool]:
        """``[(input_ids, rid, sampling_params, parsed), ...]`` and whether the request was a batch."""
        for key in UNSUPPORTED_REQUEST_KEYS:
            if body.get(key):
                raise BadRequest(f"{key!r} is not supported by this server")
        if ("text" in body) == ("input_ids" in body):
            raise BadRequest("give exactly one of 'text' and 'input_ids'")
        if "text" in body:
            texts = body["text"]
            batched = isinstance(texts, list)
            prompts = [self.tokenizer.encode(t, add_special_tokens=False) for t in (texts if batched else [texts])]
        else:
            ids = body["input_ids"]
            if not isinstance(ids, list) or not ids:
                raise BadRequest("'input_ids' must be a non-empty list of token ids (or of lists)")
            batched = isinstance(ids[0], list)
            prompts = ids if batched else [ids]
        vocab = len(self.tokenizer)
        for prompt in prompts:
            if not prompt or not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
                raise BadRequest(f"input_ids must be non-empty lists of ints in [0, {vocab})")
        params = body.get("sampling_params") or {}
        per_item = params if isinstance(params, list) else [params] * len(prompts)
        if len(per_item) != len(prompts):
            raise BadRequest(f"{len(per_item)} sampling_params for {len(prompts)} inputs")
        rid = body.get("rid")
        if isinstance(rid, list):
            rids = rid
        elif rid is not None:
            rids = [f"{rid}_{i}" for i in range(len(prompts))] if batched else [rid]
        else:
            rids = [f"agentrl-{next(self._ids)}" for _ in prompts]
        return [(ids, rid, params, sampling_from_sglang(params)) for ids, rid, params in zip(prompts, rids, per_item)], batched

    async def _one(self, input_ids: list[int], rid: str, params: dict[str, Any], sampling: SamplingParams, *, return_logprob: bool) -> dict[str, Any]:
        async with self.gate.admit(rid):
            generation = await self.policy.generate(input_ids, sampling, rid=rid)
        return generation_to_sglang(generation, rid=rid, prompt_tokens=len(input_ids), tokenizer=self.tokenizer, params=params, return_logprob=return_logprob)

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
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            return web.json_response({"error": {"message": "the body must be JSON: {\"rid\": ...} or {\"abort_all\": true}"}}, status=400)
        abort = getattr(self.policy, "abort", None)
        if abort is None:
            return web.json_response({"error": {"message": f"{type(self.policy).__name__} cannot abort requests"}}, status=400)
        for rid in list(self.gate.in_flight) if body.get("abort_all") else [body.get("rid")] if body.get("rid") else []:
            abort(rid)
        return web.Response(text="")


class SGLangServer:
    """Serves :class:`SGLangAPI` on ``host:port`` for the life of an ``async with`` block.

    ``port=0`` takes a free port; :attr:`url` tells which. Binds to localhost by default. On
    exit, requests still being answered get ``SHUTDOWN_TIMEOUT_S`` seconds before they are
    cancelled.
    """

    SHUTDOWN_TIMEOUT_S = 5.0

    def __init__(self, policy: Policy, tokenizer: PreTrainedTokenizerBase, *, model_path: str = "", host: str = "127.0.0.1",
                 port: int = 0, server_args: Mapping[str, Any] | None = None) -> None:
        self.api = SGLangAPI(policy, tokenizer, model_path, server_args)
        self.host, self.port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on ``host:port``.

        Raises:
            OSError: the address cannot be bound (in use, unknown host); nothing is left open.
        """
        self._runner = web.AppRunner(self.api.app(), access_log=None, shutdown_timeout=self.SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError:
            await self.stop()
            raise
        self.port = self._runner.addresses[0][1]
        if "port" in self.api.control.server_args:
            self.api.control.server_args["port"] = self.port

    async def stop(self) -> None:
        """Stop serving (see the class docstring); safe to call twice."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
