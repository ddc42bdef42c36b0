"""Rollouts: episodes played against a policy, recorded as token-exact trajectories."""

from agentrl.rollout.conversation import BridgeMode, ChatRenderer, PrefixMismatchError, TokenConversation
from agentrl.rollout.runner import EnvFactory, RolloutConfig, RolloutRunner, derive_seed
from agentrl.rollout.summary import summarize
from agentrl.rollout.trajectory import SCHEMA_VERSION, Segment, Termination, Trajectory

__all__ = [
    "SCHEMA_VERSION",
    "BridgeMode",
    "ChatRenderer",
    "EnvFactory",
    "PrefixMismatchError",
    "RolloutConfig",
    "RolloutRunner",
    "Segment",
    "Termination",
    "TokenConversation",
    "Trajectory",
    "derive_seed",
    "summarize",
]
