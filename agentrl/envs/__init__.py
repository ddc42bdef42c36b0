"""Async, Gymnasium-style environments for LLM agents.

:class:`Env` is the contract (see :mod:`agentrl.envs.core`); :func:`make` builds a registered env
by id; wrappers add limits and statistics; :func:`from_sync` adapts a blocking env and
:class:`GymnasiumAdapter` exposes an env as a :class:`gymnasium.Env`.
"""

from agentrl.envs.checker import CheckReport, EnvCheckError, check_env
from agentrl.envs.core import Action, Env, Message, StepResult, Task, ToolCall
from agentrl.envs.gymnasium_adapter import GymnasiumAdapter
from agentrl.envs.registration import EnvRegistry, EnvSpec, make, register, registry, spec
from agentrl.envs.sync import SyncEnv, from_sync
from agentrl.envs.wrappers import (
    EpisodeStatistics,
    EpisodeTimeout,
    MaxTurns,
    OrderEnforcing,
    StepTimeout,
    ToolOutputLimit,
    Wrapper,
)

__all__ = [
    "Action",
    "CheckReport",
    "Env",
    "EnvCheckError",
    "EnvRegistry",
    "EnvSpec",
    "EpisodeStatistics",
    "EpisodeTimeout",
    "GymnasiumAdapter",
    "MaxTurns",
    "Message",
    "OrderEnforcing",
    "StepResult",
    "StepTimeout",
    "SyncEnv",
    "Task",
    "ToolCall",
    "ToolOutputLimit",
    "Wrapper",
    "check_env",
    "from_sync",
    "make",
    "register",
    "registry",
    "spec",
]

register("agentrl/Math-v0", "agentrl.envs.math_env:MathEnv")
register("agentrl/AgentProgram-v0", "agentrl.envs.agent_program:AgentProgramEnv")
