"""Reading a config: defaults, then the ``--config`` YAML file, then command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import yaml

from agentrl.compat.slime_flags import split_slime_flags
from agentrl.config.fields import HINT_CUTOFF, flag_of
from agentrl.config.records import EpisodeConfig, RolloutCommandConfig, TrainConfig
from agentrl.data import utf8_lines
from agentrl.engines.flags import split_prefixed
from agentrl.errors import ConfigError
from agentrl.precision import AUTO

_Config = typing.TypeVar("_Config", bound=EpisodeConfig)


class FlagParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one :class:`ConfigError` line (with "did you mean"
    for an unknown flag) instead of a usage message."""

    def error(self, message: str) -> typing.NoReturn:
        if "unrecognized arguments" in message:
            unknown = [a for a in message.split(":", 1)[1].split() if a.startswith("--")]
            hints = [f"{a} (did you mean {m[0]}?)" for a in unknown if (m := difflib.get_close_matches(a, self._flags(), n=1, cutoff=HINT_CUTOFF))]
            if hints:
                message = f"unrecognized arguments: {', '.join(hints)}"
        raise ConfigError(message)

    def _flags(self) -> list[str]:
        return [s for a in self._actions for s in a.option_strings]


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object such as ``'{"topk": 3}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at column {e.colno}); expected an object such as '{{\"key\": 1}}'") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object such as '{{\"key\": 1}}', got {type(value).__name__}")
    return value


def auto_bool(text: str) -> bool | str:
    """An argparse type: ``true``, ``false`` or ``auto`` (any case)."""
    values: dict[str, bool | str] = {"true": True, "false": False, AUTO: AUTO}
    value = values.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true, false or auto, got {text!r}")
    return value


def build_parser(prog: str = "agentrl train", config_class: type[EpisodeConfig] = TrainConfig) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per field of ``config_class`` (defaults unset, so
    only flags given on the command line override the YAML file)."""
    description = (config_class.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    parser = FlagParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="YAML file with the same keys as the flags (agentrl train and rollout read the same file)")
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        if not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]  # MISSING excluded above
        allowed = f" (range: {f.metadata['range']})" if "range" in f.metadata else ""
        kw: dict[str, Any] = {"help": f"{f.metadata['help']} (default: {default}){allowed}"}
        if f.metadata.get("auto"):  # --flag [true|false|auto] (alone: true) and --no-flag
            parser.add_argument(flag_of(f.name), nargs="?", const=True, type=auto_bool, metavar="true|false|auto", **kw)
            parser.add_argument(flag_of("no_" + f.name), dest=f.name, action="store_const", const=False, help=f"same as {flag_of(f.name)} false")
        elif hints[f.name] is bool:
            parser.add_argument(flag_of(f.name), action=argparse.BooleanOptionalAction, **kw)
        else:
            kind = json_object if typing.get_origin(hints[f.name]) is dict else _scalar_type(hints[f.name])
            parser.add_argument(flag_of(f.name), type=kind, choices=f.metadata.get("choices"), nargs=f.metadata.get("nargs"), **kw)
    return parser


def load_config(argv: Sequence[str]) -> TrainConfig:
    """``agentrl train``'s config: defaults, then the ``--config`` YAML file, then flags.

    Raises:
        ConfigError: an unknown key or flag, a bad value, or a broken batch identity.
    """
    return _load(TrainConfig, argv, "agentrl train")


def load_rollout_config(argv: Sequence[str]) -> RolloutCommandConfig:
    """``agentrl rollout``'s config, read like :func:`load_config` (from the same YAML file)."""
    return _load(RolloutCommandConfig, argv, "agentrl rollout")


def _load(config_class: type[_Config], argv: Sequence[str], prog: str) -> _Config:
    passed_through = {}
    if config_class is TrainConfig:  # slime's flags agentrl notes or refuses, before --sglang-* is read as SGLang's
        passed_through["slime_args"], argv = split_slime_flags(argv, {flag_of(f.name) for f in dataclasses.fields(TrainConfig)})
    for prefix in ("sglang", "router") if config_class is TrainConfig else ():
        passed_through[f"{prefix}_args"], argv = split_prefixed(argv, prefix)
    args = vars(build_parser(prog, config_class).parse_args(list(argv)))
    config_file = args.pop("config", None)
    values = _read_yaml(config_file, config_class) if config_file is not None else {}
    hints, auto = typing.get_type_hints(config_class), _auto_fields(config_class)
    values.update({name: _coerce(value, hints[name], flag_of(name), auto=name in auto) for name, value in args.items()})
    for key, options in passed_through.items():
        if options:
            values[key] = {**values.get(key, {}), **options}
    return config_class(**values)


def _read_yaml(path: Path, config_class: type[EpisodeConfig]) -> dict[str, Any]:
    """The values of ``config_class``'s fields in a YAML file; keys of the other command are skipped."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        raw = yaml.safe_load("".join(line for _, line in utf8_lines(path, ConfigError))) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of flag names to values")
    known = {f.name for cls in (TrainConfig, RolloutCommandConfig) for f in dataclasses.fields(cls)}
    own = {f.name for f in dataclasses.fields(config_class)}
    hints, auto = typing.get_type_hints(config_class), _auto_fields(config_class)
    values = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(f"{path}: unknown key {key!r}" + (f"; did you mean {close[0].replace('_', '-')!r}?" if close else ""))
        if name in own:
            values[name] = _coerce(value, hints[name], f"{path}: {key}", auto=name in auto)
    return values


def _scalar_type(hint: Any) -> type:
    """The type argparse converts with: ``int`` for ``int | None`` and ``list[int]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) in (typing.Union, list):
        return _scalar_type(args[0])
    return cast(type, hint)


def _auto_fields(config_class: type[EpisodeConfig]) -> set[str]:
    """The bool fields that also take ``auto`` (``opt(..., auto=True)``)."""
    return {f.name for f in dataclasses.fields(config_class) if f.metadata.get("auto")}


def _coerce(value: Any, hint: Any, where: str, *, auto: bool = False) -> Any:
    """A YAML value checked against the field's type (lists and mappings item by item); an int
    or a string such as ``1e-6`` (which YAML reads as a string) becomes a float where one is due.
    With ``auto`` (a bool field that also takes it) the string ``auto`` passes too."""
    if auto:
        if isinstance(value, bool) or value == AUTO:
            return value
        raise ConfigError(f"{where} must be true, false or auto, got {value!r}")
    origin = typing.get_origin(hint)
    if value is None or hint is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_scalar_type(hint).__name__}, got {value!r}")
        return [_coerce(item, typing.get_args(hint)[0], f"{where}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return {k: _coerce(v, typing.get_args(hint)[1], f"{where}[{k}]") for k, v in value.items()}
    kind = _scalar_type(hint)
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where} must be {kind.__name__}, got {value!r}")
    return value
