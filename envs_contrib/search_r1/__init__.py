"""Search-R1: a tool-using search agent (``contrib/SearchR1-v0``), registered through the
``agentrl.envs`` entry point like any third-party env."""

from envs_contrib.search_r1.env import SearchR1Env
from envs_contrib.search_r1.retriever import RetrieverClient

__all__ = ["RetrieverClient", "SearchR1Env"]
