"""Tiny random Hugging Face models of each supported family, and Megatron trainers that release
Megatron-Core's process groups when the test ends (so each test module starts clean)."""

from __future__ import annotations

import contextlib

import pytest

from tests.trainers.megatron.megatron_cases import MODELS, save_tiny_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """``{kind: directory}`` of the fp32 tiny models (see ``megatron_cases.MODELS``)."""
    return {kind: save_tiny_model(kind, tmp_path_factory.mktemp(kind)) for kind in MODELS}


@pytest.fixture
def megatron_trainer():
    """``make(model_dir, config, loss, **kwargs)`` -> a ``MegatronTrainer`` closed after the test."""
    from agentrl.trainers.megatron.trainer import MegatronTrainer

    with contextlib.ExitStack() as stack:
        def make(*args, **kwargs):
            return stack.enter_context(contextlib.closing(MegatronTrainer(*args, **kwargs)))

        yield make
