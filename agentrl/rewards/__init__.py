"""Reward functions shared by envs and by ``--rm-type`` / ``--custom-rm-path``."""

from agentrl.rewards.math import MathScore, score_math_answer

__all__ = ["MathScore", "score_math_answer"]
