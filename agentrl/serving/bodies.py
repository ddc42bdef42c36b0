"""Reading JSON request bodies: every field typed and named, for every endpoint.

Each endpoint declares its fields (SGLang's names and defaults) as a table of :class:`Field`
(``/generate``'s tables are in :mod:`agentrl.serving.generate_request`). :func:`parse_body`
returns the values with defaults filled in, or raises :class:`BadRequest` naming the endpoint and
the field that is missing, mistyped, unknown, set to an option this server does not implement,
or holding an entry of the wrong type; the handlers answer that with a 400. Ranges and other
rules between values are checked where the values are used (e.g. ``SamplingParams``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agentrl.policies.base import describe_value


class BadRequest(ValueError):
    """A request body SGLang would reject or agentrl cannot serve; answered with a 400."""


REQUIRED: Any = object()
"""Default of a field that must be present."""


@dataclass(frozen=True)
class Field:
    """One body field.

    Attributes:
        types: the JSON types it accepts (``float`` accepts integers too; ``bool`` never passes
            as ``int``).
        default: its value when absent or ``null``; ``REQUIRED`` if it must be given.
        items: the JSON types of its entries when the value is a list (``None``: unchecked).
        neutral: an option this server does not implement, accepted only at its default (the
            value that changes nothing).
    """

    types: type | tuple[type, ...]
    default: Any = REQUIRED
    items: type | tuple[type, ...] | None = None
    neutral: bool = False


def parse_body(body: Any, fields: Mapping[str, Field], *, endpoint: str) -> dict[str, Any]:
    """The body's fields with defaults filled in (``null`` is the default).

    Raises:
        BadRequest: ``body`` is not an object, a required field is missing, a field or one of its
            entries has the wrong type, a neutral field is set to anything but its default, or
            the body has a field the endpoint does not know.
    """
    if not isinstance(body, dict):
        raise BadRequest(f"{endpoint}: the body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise BadRequest(f"{endpoint}: unknown field(s) {', '.join(unknown)}; accepted: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        value = body.get(name)
        if value is None:
            if field.default is REQUIRED:
                raise BadRequest(f"{endpoint}: '{name}' is required")
            value = field.default
        else:
            _check_value(value, field, f"{endpoint}: '{name}'")
        values[name] = value
    return values


def _check_value(value: Any, field: Field, where: str) -> None:
    if not _has_type(value, field.types):
        raise BadRequest(f"{where} must be {_type_names(field.types)}, got {describe_value(value)}")
    if field.items is not None and isinstance(value, list):
        for entry in value:
            if not _has_type(entry, field.items):
                raise BadRequest(f"{where} entries must be {_type_names(field.items, plural=True)}, got {describe_value(entry)}")
    if field.neutral and value != field.default:
        raise BadRequest(f"{where} is not supported by this server (only its default, {field.default!r}); got {describe_value(value)}")


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


def _type_names(types: type | tuple[type, ...], *, plural: bool = False) -> str:
    names = PLURAL_NAMES if plural else TYPE_NAMES
    allowed = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in allowed)


TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
PLURAL_NAMES = {bool: "booleans", int: "integers", float: "numbers", str: "strings", list: "lists", dict: "objects"}
