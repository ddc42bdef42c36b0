"""Server options as Python dicts and as command-line flags, both ways (slime's convention).

A dict keyed by a server's own argument names (SGLang's ``ServerArgs`` fields, sglang-router's
``RouterArgs`` fields) becomes that server's flags: ``{"mem_fraction_static": 0.8}`` ->
``--mem-fraction-static 0.8``. On agentrl's own command line the same options carry a prefix,
``--sglang-mem-fraction-static 0.8`` or ``--router-policy round_robin``; :func:`split_prefixed`
reads them back into such a dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from agentrl.errors import ConfigError


def to_flags(options: Mapping[str, Any], *, field: str = "options") -> list[str]:
    """The flags for ``options``, in their order.

    ``True`` gives a bare flag; ``False`` and ``None`` give nothing (the server's default, which
    is off for SGLang's switches); a list or tuple gives the flag followed by each item; a dict
    gives its JSON (SGLang's ``--json-model-override-args``); anything else gives ``str(value)``.

    Raises:
        ConfigError: a key that is not an identifier-like name (``field`` names the option set).
    """
    flags: list[str] = []
    for name, value in options.items():
        if not isinstance(name, str) or not name or name.startswith("-") or not name.replace("-", "_").isidentifier():
            raise ConfigError(f"{field}: {name!r} is not an option name; write SGLang's field names, e.g. 'mem_fraction_static'")
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is None or value is False:
            continue
        elif isinstance(value, (list, tuple)):
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        else:
            flags += [flag, str(value)]
    return flags


def split_prefixed(argv: Sequence[str], prefix: str) -> tuple[dict[str, Any], list[str]]:
    """``(options, rest)``: the ``--PREFIX-*`` options of ``argv`` as a dict, and the other tokens.

    ``--sglang-mem-fraction-static 0.8`` -> ``{"mem_fraction_static": "0.8"}``; a flag with no
    value -> ``True``; several values -> a list. Values stay strings (the server parses them).

    Raises:
        ConfigError: ``--PREFIX-`` with no name after it.
    """
    head = f"--{prefix}-"
    options: dict[str, Any] = {}
    rest: list[str] = []
    key: str | None = None
    for token in argv:
        if token.startswith(head):
            name = token[len(head):].split("=", 1)
            if not name[0]:
                raise ConfigError(f"{token!r}: expected {head}NAME, e.g. {head}mem-fraction-static")
            options[name[0].replace("-", "_")] = name[1] if len(name) == 2 else True
            key = name[0].replace("-", "_") if len(name) == 1 else None  # NAME=VALUE takes no more values
        elif token.startswith("--"):
            key = None
            rest.append(token)
        elif key is not None:
            options[key] = _append(options[key], token)
        else:
            rest.append(token)
    return options, rest


def _append(current: Any, value: str) -> Any:
    if current is True:
        return value
    return [*current, value] if isinstance(current, list) else [current, value]
