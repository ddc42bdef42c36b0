"""Reward functions shared by envs and by ``--rm-type`` / ``--custom-rm-path``."""

from agentrl.rewards.math import MathScore, MathScorer, score_math_answer, shared_math_scorer

__all__ = ["MathScore", "MathScorer", "score_math_answer", "shared_math_scorer"]
