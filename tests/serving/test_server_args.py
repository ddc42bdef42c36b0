"""``agentrl serve --dtype``: ``auto`` (the default) resolves for ``--device`` as ``agentrl
train --bf16 auto`` does; an explicit dtype is kept."""

from __future__ import annotations

import argparse

import pytest
import torch

from agentrl import precision
from agentrl.errors import ConfigError
from agentrl.serving.server_args import ServerArgs


def _parse(*argv: str) -> ServerArgs:
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return ServerArgs.from_cli_args(parser.parse_args(["--model-path", "m", *argv]))


@pytest.mark.parametrize("native", [True, False])
def test_dtype_auto_is_the_default_and_follows_the_device(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    expected = "bfloat16" if native else "float32"
    assert _parse().dtype == expected and _parse("--dtype", "auto").dtype == expected and ServerArgs("m").info()["dtype"] == expected
    assert _parse("--dtype", "bfloat16").dtype == "bfloat16" and _parse("--dtype", "float32").dtype == "float32"


def test_dtype_auto_on_cuda_without_cuda_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match=r"^--device cuda: no CUDA device here"):
        ServerArgs("m", device="cuda")
    with pytest.raises(ConfigError, match="--dtype must be one of auto, bfloat16, float32, got 'fp8'"):
        ServerArgs("m", dtype="fp8")
