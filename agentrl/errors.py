"""One error hierarchy for agentrl, one subclass per boundary.

Foreign exceptions are wrapped where they cross a boundary (``raise X(...) from e``) so that
callers can tell an infrastructure failure from a bug, and every message says what was expected,
what arrived and how to fix it.
"""

from __future__ import annotations


class AgentRLError(Exception):
    """Root of every error agentrl raises on purpose. ``exit_code`` is what the command line
    exits with when it ends a command (2: bad input)."""

    exit_code = 2


class ConfigError(AgentRLError, ValueError):
    """A configuration value or flag is invalid; the message names the flag or field."""


class DataError(AgentRLError, ValueError):
    """A dataset file is unreadable or a row is malformed; the message names file and line."""


class RegistryError(AgentRLError, KeyError):
    """An env id is malformed, unknown, or registered twice."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EnvError(AgentRLError):
    """An environment failed (raised, hung, or broke its contract).

    The rollout runner ends the episode that hit it with termination ``env_error`` and leaves
    the other episodes running.
    """


class EnvTimeoutError(EnvError):
    """An env step or a whole episode took longer than its configured limit."""


class EnvStateError(EnvError):
    """The env was driven out of order: ``step`` before ``reset``, or after the episode ended."""


class ChatTemplateError(AgentRLError):
    """The chat template refused a conversation (its own ``raise_exception``: roles that do not
    alternate, a system message it does not support ...), or the tokenizer has none. In a rollout
    it ends the episode as ``env_error``; at the OpenAI endpoint it is a 400."""


class PolicyError(AgentRLError):
    """The inference engine failed or answered something that breaks the policy contract."""


class TrainingError(AgentRLError):
    """The training run cannot go on, e.g. a rollout step left no episode to train on."""

    exit_code = 1


class ModelError(AgentRLError):
    """A model spec could not be resolved, fetched or loaded."""
