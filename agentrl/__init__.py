"""agentrl: train LLM agents with reinforcement learning.

The environment API is reachable from the top (``agentrl.make``, ``agentrl.register``,
``agentrl.Env`` ...), imported on first use, so ``import agentrl`` stays cheap. Training is
``agentrl train`` on the command line, or ``agentrl.train.train(agentrl.config.load_config([...]))``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from agentrl.envs import Env, EnvSpec, StepResult, Task, ToolCall, Wrapper, check_env, make, register, spec

__all__ = ["Env", "EnvSpec", "StepResult", "Task", "ToolCall", "Wrapper", "__version__", "check_env", "make", "register", "spec"]
_FROM_ENVS = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _FROM_ENVS:
        return getattr(importlib.import_module("agentrl.envs"), name)
    raise AttributeError(f"module 'agentrl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_ENVS})
