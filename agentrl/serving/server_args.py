"""The options of ``agentrl serve``, under SGLang's ``ServerArgs`` names and flags.

``--model-path`` (alias ``--model``), ``--host``, ``--port``, ``--dtype``, ``--device``,
``--served-model-name``, ``--random-seed``, ``--max-running-requests`` and ``--tool-call-parser``
mean what they mean for ``python -m sglang.launch_server``; ``--port 0`` (agentrl only) takes a
free port; ``--enable-openai-api`` (agentrl only; SGLang always serves it) adds the OpenAI
endpoint with recorded sessions (:mod:`agentrl.serving.openai_api`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from agentrl.errors import ConfigError
from agentrl.precision import AUTO, resolve_bf16

DTYPES = ("auto", "bfloat16", "float32")
"""``--dtype`` choices; ``auto`` is bfloat16 where ``--device`` computes in bf16 natively, else
float32 (as ``agentrl train --bf16 auto`` decides; :mod:`agentrl.precision`)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerArgs:
    """How ``agentrl serve`` loads and serves a model.

    Attributes:
        model_path: a Hugging Face model directory or a built-in name such as ``smollm2-135m``.
        host: interface to bind; localhost by default, since the weight-update endpoints load
            files named by the caller and join process groups it names.
        port: TCP port; 0 takes a free one (the ready line tells which).
        dtype: weight and KV-cache dtype; ``auto`` (the default) is resolved to ``bfloat16`` or
            ``float32`` for ``device`` when the args are built.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        served_model_name: the name reported to clients; ``None`` means ``model_path``.
        random_seed: seeds the engine's per-request seeds; ``None`` draws one.
        max_running_requests: most requests decoded together; more wait.
        enable_openai_api: also serve ``/v1/chat/completions``, ``/v1/models`` and ``/sessions``.
        tool_call_parser: how that endpoint reads tool calls (agentrl's parser names:
            ``hermes``, ``llama3``, ``none``, or ``pkg.module:function``).
    """

    model_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    dtype: str = AUTO
    device: str = "cpu"
    served_model_name: str | None = None
    random_seed: int | None = None
    max_running_requests: int = 64
    enable_openai_api: bool = False
    tool_call_parser: str = "hermes"

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port must lie in [0, 65535], got {self.port}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.dtype == AUTO:
            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise ConfigError(f"--device {self.device}: no CUDA device here (torch.cuda.is_available() is False); use --device cpu")
            choice = resolve_bf16(AUTO, self.device)
            dtype, other = ("bfloat16", "float32") if choice.enabled else ("float32", "bfloat16")
            log.info("--dtype auto -> %s (%s; --dtype %s forces it)", dtype, choice.reason, other)
            object.__setattr__(self, "dtype", dtype)
        if self.max_running_requests < 1:
            raise ConfigError(f"--max-running-requests must be >= 1, got {self.max_running_requests}")

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model-path", "--model", dest="model_path", required=True, help="HF model directory or built-in name (smollm2-135m)")
        parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
        parser.add_argument("--port", type=int, default=30000, help="port; 0 takes a free one")
        parser.add_argument("--dtype", choices=DTYPES, default=AUTO, help="weight dtype; auto: bfloat16 where --device computes in bf16 natively, else float32")
        parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
        parser.add_argument("--served-model-name", default=None, help="name reported to clients (default: the model path)")
        parser.add_argument("--random-seed", type=int, default=None)
        parser.add_argument("--max-running-requests", type=int, default=64, help="most requests decoded together")
        parser.add_argument("--enable-openai-api", action="store_true", help="also serve the OpenAI API (/v1/chat/completions) with recorded sessions")
        parser.add_argument("--tool-call-parser", default="hermes", help="tool-call format of the OpenAI API: hermes, llama3, none or pkg.module:function")

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})

    def info(self) -> dict[str, Any]:
        """What ``/get_server_info`` reports, under SGLang's names (one GPU: ``tp_size`` 1)."""
        return {**dataclasses.asdict(self), "tokenizer_path": self.model_path,
                "served_model_name": self.served_model_name or self.model_path, "tp_size": 1, "dp_size": 1,
                "skip_tokenizer_init": False, "is_embedding": False}
