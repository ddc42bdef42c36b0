"""Environments that are not core (search, tools, sandboxes).

Each registers through the ``agentrl.envs`` entry-point group in ``pyproject.toml``, exactly as a
third-party package would, so nothing in ``agentrl`` imports this package.
"""
