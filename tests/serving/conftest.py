"""Serving fixtures: a tiny random Llama (SmolLM2's tokenizer, tied embeddings as SmolLM2 has) and
``agentrl serve`` run as a real subprocess."""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, smollm2_dir) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32768, eos_token_id=tokenizer.eos_token_id, bos_token_id=1,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@contextlib.contextmanager
def agentrl_serve(*args: str, stop: signal.Signals = signal.SIGINT, ready_s: float = 180.0) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``agentrl serve ARGS`` until its ready line; yields ``(process, url)``. On exit sends
    ``stop`` and asserts the server exits with status 0 (a clean shutdown)."""
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finally; the server's stderr, for failure messages
    proc = subprocess.Popen([sys.executable, "-m", "agentrl.cli", "serve", *args], stdout=subprocess.PIPE, stderr=log)
    try:
        url = _ready_url(proc, ready_s, log)
        yield proc, url
        proc.send_signal(stop)
        assert proc.wait(timeout=60) == 0, f"agentrl serve exited with {proc.returncode}: {_tail(log)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        log.close()


def _ready_url(proc: subprocess.Popen, ready_s: float, log) -> str:
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.5)[0]:
            line = proc.stdout.readline().decode()
            if " ready at http://" in line:
                return line.rsplit(" ", 1)[1].strip()
            if not line and proc.poll() is not None:
                break
    raise AssertionError(f"agentrl serve did not get ready (exit status {proc.poll()}): {_tail(log)}")


def _tail(log) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-3000:]
