"""Policies: the inference backends the rollout runner samples from."""

from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.policies.scripted import ScriptedPolicy
from agentrl.policies.sglang import SGLangPolicy

__all__ = ["Generation", "Policy", "SGLangPolicy", "SamplingParams", "ScriptedPolicy"]
