"""Inference engines as processes: launch SGLang or ``agentrl serve``, put sglang-router in front,
keep them healthy (:class:`EngineFleet`).

* :mod:`agentrl.engines.flags`: server options as dicts and flags (``--sglang-*``, ``--router-*``).
* :mod:`agentrl.engines.launch`: :class:`EngineSpec`, launched and external engines.
* :mod:`agentrl.engines.router`: sglang-router as a process, and its worker registry.
* :mod:`agentrl.engines.fleet`: engines + router, health monitor, restarts and drops, shutdown.
"""

from agentrl.engines.fleet import EngineFleet, FleetConfig, FleetError, FleetEvent
from agentrl.engines.launch import EngineLaunchError, EngineSpec
from agentrl.engines.router import RouterClient, RouterError, RouterSpec

__all__ = ["EngineFleet", "EngineLaunchError", "EngineSpec", "FleetConfig", "FleetError", "FleetEvent", "RouterClient",
           "RouterError", "RouterSpec"]
