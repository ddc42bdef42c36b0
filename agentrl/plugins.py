"""Plug-in functions named by path on the command line, in either spelling users bring:
``pkg.module:function`` or slime's ``pkg.module.function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast

from agentrl.errors import ConfigError


def load_function(path: str, *, flag: str) -> Callable[..., Any]:
    """Import the function ``path`` names.

    Raises:
        ConfigError: the module or the function is not there (the message names ``flag``).
    """
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{flag} {path!r}: expected pkg.module:function or pkg.module.function")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"{flag} {path!r} could not be loaded: {e}") from e
    if not callable(fn):
        raise ConfigError(f"{flag} {path!r} is not a function")
    return cast(Callable[..., Any], fn)
