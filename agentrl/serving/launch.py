"""``agentrl serve``: the embedded engine behind SGLang's native HTTP API, as a process.

Loads the model (see :class:`~agentrl.serving.server_args.ServerArgs`), runs a one-token warm-up
generation, prints one line ending in the server's URL to stdout when it is ready, and serves
until SIGINT or SIGTERM; then it stops accepting requests, gives those being answered a few
seconds, closes the engine, leaves any weight-update group, and returns 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from agentrl.envs.tool_calls import get_tool_parser
from agentrl.errors import ConfigError
from agentrl.policies.base import SamplingParams
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.rollout.conversation import ChatRenderer
from agentrl.serving.openai_api import OpenAIAPI, policy_generate
from agentrl.serving.openai_session import SessionConfig
from agentrl.serving.server_args import ServerArgs
from agentrl.serving.sglang_api import SGLangServer


def serve(args: ServerArgs) -> int:
    """Serve ``args.model_path`` until SIGINT/SIGTERM; returns the exit status (0).

    Raises:
        ModelError: the model spec cannot be resolved or loaded.
        ConfigError: ``--tool-call-parser`` names no parser.
    """
    get_tool_parser(args.tool_call_parser)
    engine = EmbeddedEngine.from_pretrained(
        args.model_path, dtype=args.dtype, device=args.device, max_batch_size=args.max_running_requests, seed=args.random_seed,
    )
    return asyncio.run(_serve(engine, args))


async def _serve(engine: EmbeddedEngine, args: ServerArgs) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with engine:
        await engine.generate([engine.tokenizer.eos_token_id or 0], SamplingParams(max_new_tokens=1), rid="warmup")
        server = SGLangServer(engine, engine.tokenizer, model_path=args.model_path, host=args.host, port=args.port,
                              server_args=args.info(), extra_routes=_openai_routes(engine, args))
        try:
            await server.start()
        except OSError as e:
            raise ConfigError(f"--host/--port: cannot listen on {args.host}:{args.port}: {e.strerror or e}") from e
        try:
            print(f"agentrl serve: {args.model_path} ready at {server.url}", flush=True)
            await stop.wait()
        finally:
            await server.stop()
    print("agentrl serve: stopped", file=sys.stderr, flush=True)
    return 0


def _openai_routes(engine: EmbeddedEngine, args: ServerArgs) -> list[web.RouteDef]:
    """The OpenAI endpoint's routes when ``--enable-openai-api``, else none."""
    if not args.enable_openai_api:
        return []
    api = OpenAIAPI(policy_generate(engine), ChatRenderer(engine.tokenizer), model_name=args.served_model_name or args.model_path,
                    parser=get_tool_parser(args.tool_call_parser), config=SessionConfig(max_context_len=engine.context_length))
    return api.routes()
