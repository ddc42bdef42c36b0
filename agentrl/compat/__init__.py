"""Compatibility with other frameworks' plug-in functions (slime's reward functions)."""
