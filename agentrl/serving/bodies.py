"""Reading the JSON bodies of the control and weight endpoints: every field typed and named.

Each endpoint declares its fields (SGLang's names and defaults) as a table of :class:`Field`.
:func:`parse_body` returns the values with defaults filled in, or raises :class:`BadRequest`
naming the endpoint and the field that is missing, mistyped or unknown; the handlers answer
that with a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web


class BadRequest(ValueError):
    """A request body SGLang would reject or agentrl cannot serve; answered with a 400."""


REQUIRED: Any = object()
"""Default of a field that must be present."""


@dataclass(frozen=True)
class Field:
    """One body field: the JSON types it accepts and its default (``REQUIRED`` if none).

    ``null`` stands for the default when the default is ``None``; ``bool`` never passes as
    ``int``.
    """

    types: type | tuple[type, ...]
    default: Any = REQUIRED


def parse_body(body: Any, fields: Mapping[str, Field], *, endpoint: str) -> dict[str, Any]:
    """The body's fields with defaults filled in.

    Raises:
        BadRequest: ``body`` is not an object, a required field is missing, a field has the
            wrong type, or the body has a field the endpoint does not know.
    """
    if not isinstance(body, dict):
        raise BadRequest(f"{endpoint}: the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"{endpoint}: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        value = body.get(name)
        if value is None and (name not in body or field.default is None):
            if field.default is REQUIRED:
                raise BadRequest(f"{endpoint}: '{name}' is required")
            values[name] = field.default
        elif not _has_type(value, field.types):
            raise BadRequest(f"{endpoint}: '{name}' must be {_type_names(field.types)}, got {type(value).__name__} {value!r:.80}")
        else:
            values[name] = value
    return values


async def read_json(request: web.Request, *, endpoint: str, empty_ok: bool = False) -> Any:
    """The request's JSON body; ``{}`` for an empty body when ``empty_ok``.

    Raises:
        BadRequest: the body is not JSON (or is empty and must not be).
    """
    raw = await request.read()
    if not raw.strip() and empty_ok:
        return {}
    try:
        return await request.json()
    except ValueError as e:
        raise BadRequest(f"{endpoint}: the body must be JSON ({e})") from e


def parse_weight_version(value: str | int | None, *, endpoint: str, field: str = "weight_version") -> int | None:
    """SGLang's string ``weight_version`` as the integer versions agentrl's engines keep.

    Raises:
        BadRequest: the value is not an integer or a string spelling one.
    """
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{endpoint}: '{field}' must be an integer (as a string, e.g. \"3\"), got {value!r}") from None


def bad_request(message: str) -> web.Response:
    """The 400 the generation and control endpoints answer: ``{"error": {"message"}}``."""
    return web.json_response({"error": {"message": message}}, status=400)


def _has_type(value: Any, types: type | tuple[type, ...]) -> bool:
    allowed = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


def _type_names(types: type | tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    allowed = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in allowed)
