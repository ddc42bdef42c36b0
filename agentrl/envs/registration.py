"""Env ids, specs and registries: :func:`register`, :func:`make` and :func:`spec`.

An env id reads ``[namespace/]Name[-vN]``, e.g. ``math/Boxed-v0``. It maps to an
:class:`EnvSpec`: an entry point (``"pkg.module:Class"`` or a callable), keyword arguments and
an optional turn limit. ``make(id)`` builds the env and wraps it in :class:`MaxTurns` (when
the spec has ``max_turns``) and :class:`OrderEnforcing`.

Lookup rules:

* ``make("ns/Name")`` without a version picks the latest registered version;
* ``make("some.module:ns/Name-v0")`` imports ``some.module`` first (it registers the env with
  the default registry) and then makes ``ns/Name-v0``;
* an unknown id raises :class:`RegistryError` with close matches ("Did you mean ...?"), an
  unknown version lists the versions that exist.

Third-party packages register envs without being imported, through entry points of the group
``agentrl.envs``: the entry point's name is the env id and its value the ``"pkg.module:Class"``
entry point, e.g. in ``pyproject.toml``::

    [project.entry-points."agentrl.envs"]
    "thirdparty/Echo-v0" = "thirdparty_envs:EchoEnv"
    "thirdparty/Search-v0" = "thirdparty_envs:SEARCH_SPEC"

An entry point may name an :class:`EnvSpec` instead of a class, to give the env ``max_turns``
and default ``kwargs`` (``SEARCH_SPEC = EnvSpec("thirdparty/Search-v0", "thirdparty_envs:SearchEnv",
{"topk": 3}, max_turns=4)``); :meth:`EnvSpec.resolve` reads it when the env is made.

The default :data:`registry` discovers them once, on its first lookup; nothing is imported
until the env is made, and a broken entry point fails only when that env is made, with an error
naming its distribution.

Tests scope registrations with their own :class:`EnvRegistry` instead of touching the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from agentrl.envs.core import Env
from agentrl.envs.wrappers import MaxTurns, OrderEnforcing
from agentrl.errors import RegistryError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agentrl.envs"
"""The entry-point group that third-party packages declare their envs in."""

ENV_ID_RE = re.compile(
    r"^(?:(?P<namespace>[A-Za-z0-9_-]+)/)?(?P<name>[A-Za-z0-9_.-]+?)(?:-v(?P<version>\d+))?$"
)
_ENTRY_POINT_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class EnvCreator(Protocol):
    """A callable that builds an env from keyword arguments, usually the env class itself."""

    def __call__(self, **kwargs: Any) -> Env: ...


def parse_env_id(env_id: str) -> tuple[str | None, str, int | None]:
    """Split ``[namespace/]Name[-vN]`` into ``(namespace, name, version)``.

    Raises:
        RegistryError: ``env_id`` is malformed, or not written in its canonical form (a version
            with leading zeros).
    """
    match = ENV_ID_RE.fullmatch(env_id) if isinstance(env_id, str) else None
    if match is None:
        raise RegistryError(
            f"malformed env id {env_id!r}: expected '[namespace/]Name[-vN]' such as 'math/Boxed-v0' "
            "(letters, digits, '_', '-' and '.'; no spaces or ':')"
        )
    namespace, name, version = match.group("namespace", "name", "version")
    parsed = (namespace, name, None if version is None else int(version))
    if format_env_id(*parsed) != env_id:
        raise RegistryError(f"malformed env id {env_id!r}: write it as {format_env_id(*parsed)!r}")
    return parsed


def format_env_id(namespace: str | None, name: str, version: int | None) -> str:
    """The env id of ``(namespace, name, version)``; the inverse of :func:`parse_env_id`."""
    env_id = name if namespace is None else f"{namespace}/{name}"
    return env_id if version is None else f"{env_id}-v{version}"


@dataclass(frozen=True)
class EnvSpec:
    """How to build one registered env.

    Attributes:
        id: the env id, ``[namespace/]Name[-vN]``.
        entry_point: ``"pkg.module:Attr"`` (imported only when the env is made) or a callable
            that returns an :class:`Env`. The attribute may also be an :class:`EnvSpec` of the
            same id (how an entry point gives ``max_turns`` and ``kwargs``; see :meth:`resolve`).
        kwargs: keyword arguments for the entry point; ``make``'s own keyword arguments are
            merged over them. JSON-serialisable if the spec is to be.
        max_turns: steps per episode before :class:`MaxTurns` truncates it; ``None``: no limit.
        distribution: the installed distribution whose entry point declared this env; ``None``
            for envs registered in code.
    """

    id: str
    entry_point: str | EnvCreator
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_turns: int | None = None
    distribution: str | None = None

    def __post_init__(self) -> None:
        parse_env_id(self.id)
        if isinstance(self.entry_point, str):
            if not _ENTRY_POINT_RE.fullmatch(self.entry_point):
                raise RegistryError(
                    f"env {self.id!r}: malformed entry point {self.entry_point!r}; "
                    "expected 'pkg.module:Attr' or a callable"
                )
        elif not callable(self.entry_point):
            raise RegistryError(
                f"env {self.id!r}: entry point must be a 'pkg.module:Attr' string or a callable, "
                f"got {type(self.entry_point).__name__}"
            )
        if self.max_turns is not None and (type(self.max_turns) is not int or self.max_turns < 1):
            raise RegistryError(
                f"env {self.id!r}: max_turns must be an int >= 1 or None, got {self.max_turns!r}"
            )
        object.__setattr__(self, "kwargs", dict(self.kwargs))  # the spec owns its kwargs

    @property
    def namespace(self) -> str | None:
        """The id's namespace (``"math"`` in ``math/Boxed-v0``), or ``None``."""
        return parse_env_id(self.id)[0]

    @property
    def name(self) -> str:
        """The id's name (``"Boxed"`` in ``math/Boxed-v0``)."""
        return parse_env_id(self.id)[1]

    @property
    def version(self) -> int | None:
        """The id's version (``0`` in ``math/Boxed-v0``), or ``None``."""
        return parse_env_id(self.id)[2]

    def make(self, **kwargs: Any) -> Env:
        """Build the env: call the entry point with ``{**self.kwargs, **kwargs}`` and wrap the
        result in :class:`MaxTurns` (if ``max_turns`` is set) and :class:`OrderEnforcing`; all
        of it after :meth:`resolve`.

        To change the turn limit, make a changed spec:
        ``dataclasses.replace(spec, max_turns=4).make()``.

        Raises:
            RegistryError: the entry point cannot be loaded, or did not return an :class:`Env`.
        """
        spec = self.resolve()
        env = spec.load()(**{**spec.kwargs, **kwargs})
        if not isinstance(env, Env):
            raise RegistryError(
                f"env {self.id!r}: entry point {spec._entry_point_name()} returned "
                f"{type(env).__name__}, not an agentrl.envs.Env"
            )
        if spec.max_turns is not None:
            env = MaxTurns(env, spec.max_turns)
        return OrderEnforcing(env)

    def resolve(self) -> EnvSpec:
        """The spec the env is built from: this one, or, when the entry point names an
        :class:`EnvSpec` (an entry point's way to give ``max_turns`` and ``kwargs``), that spec
        under this one's settings: this spec's ``kwargs`` over its ``kwargs``, and this spec's
        ``max_turns`` unless that is ``None``. Imports the entry point's module.

        Raises:
            RegistryError: the entry point cannot be loaded; or the spec it names has another
                id, or names an :class:`EnvSpec` itself.
        """
        target = self._target()
        if not isinstance(target, EnvSpec):
            return self
        where = f"env {self.id!r}{self._origin()}: its entry point {self.entry_point!r}"
        if target.id != self.id:
            raise RegistryError(f"{where} names the spec of {target.id!r}; an entry point's name and its EnvSpec's id must agree")
        if isinstance(target._target(), EnvSpec):
            raise RegistryError(
                f"env {self.id!r}: the EnvSpec that entry point {self.entry_point!r} names must name an Env class or "
                "factory, not another EnvSpec")
        return dataclasses.replace(target, kwargs={**target.kwargs, **self.kwargs}, distribution=self.distribution,
                                   max_turns=target.max_turns if self.max_turns is None else self.max_turns)

    def load(self) -> EnvCreator:
        """The callable that builds the env: the entry point of the spec :meth:`resolve` gives,
        imported if it is a string.

        Raises:
            RegistryError: the module failed to import or lacks the attribute; the message names
                the distribution that declared the entry point, if any.
        """
        spec = self.resolve()
        target = spec._target()
        if not callable(target):
            raise RegistryError(
                f"env {self.id!r}{spec._origin()}: entry point {spec.entry_point!r} is not callable"
            )
        creator: EnvCreator = target
        return creator

    def _target(self) -> Any:
        """What the entry point names: imported if it is a string, else the callable itself."""
        if not isinstance(self.entry_point, str):
            return self.entry_point
        module_name, _, attr_path = self.entry_point.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for attr in attr_path.split("."):
                target = getattr(target, attr)
        except Exception as e:
            raise RegistryError(
                f"env {self.id!r}{self._origin()}: cannot load entry point {self.entry_point!r}: "
                f"{type(e).__name__}: {e}"
            ) from e
        return target

    def to_json(self) -> str:
        """The spec as a JSON string, which :meth:`from_json` turns back into an equal spec.

        Raises:
            RegistryError: the entry point is a callable, or ``kwargs`` is not JSON-serialisable.
        """
        if not isinstance(self.entry_point, str):
            raise RegistryError(
                f"env {self.id!r}: a spec whose entry point is a callable ({self._entry_point_name()}) "
                "cannot be serialised; register it with a 'pkg.module:Attr' string"
            )
        try:
            return json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        except (TypeError, ValueError) as e:
            raise RegistryError(f"env {self.id!r}: kwargs are not JSON-serialisable: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> EnvSpec:
        """The spec that :meth:`to_json` wrote.

        Raises:
            RegistryError: ``text`` is not a JSON object with the fields of an :class:`EnvSpec`.
        """
        try:
            fields = json.loads(text)
            return cls(**fields)
        except (json.JSONDecodeError, TypeError) as e:
            raise RegistryError(f"not a JSON env spec: {e}") from e

    def _origin(self) -> str:
        return "" if self.distribution is None else f" (entry point of distribution {self.distribution!r})"

    def _entry_point_name(self) -> str:
        if isinstance(self.entry_point, str):
            return repr(self.entry_point)
        return getattr(self.entry_point, "__qualname__", repr(self.entry_point))


class EnvRegistry:
    """A set of env specs, by id.

    The module-level :func:`register`, :func:`make` and :func:`spec` use the default
    :data:`registry`; tests and tools that need isolation make their own ``EnvRegistry()``.
    """

    def __init__(self, *, discover: bool = False) -> None:
        """Args:
            discover: register the ``agentrl.envs`` entry points of the installed distributions
                on the first lookup (``make``, ``spec``, ``ids``). The default registry does.
        """
        self._specs: dict[str, EnvSpec] = {}
        self._broken: dict[str, str] = {}  # env id -> why its entry point could not be registered
        self._discover_pending = discover

    def register(
        self,
        id: str,
        entry_point: str | EnvCreator,
        /,
        *,
        max_turns: int | None = None,
        override: bool = False,
        **kwargs: Any,
    ) -> EnvSpec:
        """Register an env under ``id`` and return its spec.

        Args:
            id: ``[namespace/]Name[-vN]``.
            entry_point: ``"pkg.module:Attr"`` or a callable returning an :class:`Env`.
            max_turns: the turn limit :meth:`make` applies; ``None``: no limit.
            override: replace a spec already registered under ``id`` instead of raising.
            **kwargs: default keyword arguments for the entry point (the spec's ``kwargs``).

        Raises:
            RegistryError: the id or entry point is malformed; ``id`` is taken (and ``override``
                is false); or the name is registered both with and without a version.
        """
        new = EnvSpec(id, entry_point, kwargs, max_turns)
        if id in self._specs and not override:
            raise RegistryError(
                f"env id {id!r} is already registered{self._specs[id]._origin()}; pass override=True "
                "to replace it (a package registers an env either by entry point or in code, not both)"
            )
        self._check_version_mix(new)
        self._specs[id] = new
        return new

    def make(self, id: str, /, **kwargs: Any) -> Env:
        """Build the env registered under ``id``; see :meth:`EnvSpec.make`.

        Args:
            id: an env id, optionally without version (the latest is used) and optionally
                prefixed by a module to import first (``"some.module:ns/Name-v0"``; the module
                registers with the default registry, so the prefix is for that registry).
            **kwargs: keyword arguments merged over the spec's ``kwargs``.

        Raises:
            RegistryError: see :meth:`spec`; or the entry point fails to load.
        """
        return self.spec(id).make(**kwargs)

    def spec(self, id: str) -> EnvSpec:
        """The spec registered under ``id`` (same forms of ``id`` as :meth:`make`).

        Raises:
            RegistryError: ``id`` is malformed or unknown (with close matches), its version is
                unknown (with the versions that exist), its module prefix cannot be imported,
                or its entry point was declared wrongly by an installed distribution.
        """
        module, _, env_id = id.rpartition(":")
        if module:
            _import_registering_module(module, id)
        self._discover_once()
        if env_id in self._specs:
            return self._specs[env_id]
        if env_id in self._broken:
            raise RegistryError(self._broken[env_id])
        namespace, name, version = parse_env_id(env_id)
        versions = self._versions(namespace, name)
        if version is None and versions:
            return self._specs[format_env_id(namespace, name, max(versions))]
        raise RegistryError(self._unknown_message(env_id, namespace, name, version))

    def ids(self) -> list[str]:
        """The registered env ids, sorted."""
        self._discover_once()
        return sorted(self._specs)

    def discover_entry_points(self) -> list[str]:
        """Register the ``agentrl.envs`` entry points of the installed distributions, lazily:
        nothing is imported until an env is made.

        An entry point whose name is not a valid id, or whose value is not ``"pkg.module:Attr"``,
        does not stop the others: making that id raises :class:`RegistryError` naming the
        distribution. An id already registered keeps its spec (logged at warning level when the
        entry point differs). Calling this again registers only what is new.

        Returns:
            The ids registered by this call.
        """
        self._discover_pending = False
        added = []
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self._register_entry_point(entry_point):
                added.append(entry_point.name)
        return added

    def _register_entry_point(self, entry_point: importlib.metadata.EntryPoint) -> bool:
        dist = entry_point.dist.name if entry_point.dist is not None else "<unknown>"
        try:
            new = EnvSpec(entry_point.name, entry_point.value, distribution=dist)
        except RegistryError as e:
            self._broken[entry_point.name] = (
                f"the {ENTRY_POINT_GROUP!r} entry point {entry_point.name!r} = {entry_point.value!r} "
                f"of distribution {dist!r} is invalid: {e}; fix that package's entry points"
            )
            log.warning("%s", self._broken[entry_point.name])
            return False
        existing = self._specs.get(new.id)
        if existing is not None:
            if existing != new:
                log.warning("ignoring entry point %r of %r: the id is already registered%s",
                            new.id, dist, existing._origin())
            return False
        self._specs[new.id] = new
        return True

    def _discover_once(self) -> None:
        if self._discover_pending:
            self.discover_entry_points()

    def _versions(self, namespace: str | None, name: str) -> list[int]:
        return [
            s.version for s in self._specs.values()
            if s.namespace == namespace and s.name == name and s.version is not None
        ]

    def _check_version_mix(self, new: EnvSpec) -> None:
        """Refuse ``ns/Name`` beside ``ns/Name-vN``: ``make("ns/Name")`` would be ambiguous."""
        same_name = [s for s in self._specs.values() if s.namespace == new.namespace and s.name == new.name]
        clash = next((s.id for s in same_name if (s.version is None) != (new.version is None)), None)
        if clash is not None:
            raise RegistryError(
                f"cannot register {new.id!r} beside {clash!r}: a name is registered either with versions "
                "or without, since make() of the bare name picks the latest version"
            )

    def _unknown_message(self, env_id: str, namespace: str | None, name: str, version: int | None) -> str:
        same_name = sorted(s.id for s in self._specs.values() if (s.namespace, s.name) == (namespace, name))
        if same_name:
            return f"unknown version {env_id!r}; registered versions: {', '.join(same_name)}"
        if version is None:  # compare like with like: bare names, or full ids
            candidates = {format_env_id(s.namespace, s.name, None) for s in self._specs.values()}
        else:
            candidates = set(self._specs)
        matches = difflib.get_close_matches(env_id, sorted(candidates), n=3, cutoff=0.75)  # a shared namespace alone is not close
        if matches:
            return f"unknown env id {env_id!r}. Did you mean {' or '.join(map(repr, matches))}?"
        return (
            f"unknown env id {env_id!r}. Import the module that registers it "
            f"(make('pkg.module:{env_id}')) or install the package that declares it as an "
            f"{ENTRY_POINT_GROUP!r} entry point."
        )


def _import_registering_module(module: str, id: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise RegistryError(f"env id {id!r}: cannot import module {module!r} to register the env: {e}") from e


registry = EnvRegistry(discover=True)
"""The default registry: holds the envs registered by :func:`register` and by entry points."""


def register(
    id: str,
    entry_point: str | EnvCreator,
    /,
    *,
    max_turns: int | None = None,
    override: bool = False,
    **kwargs: Any,
) -> EnvSpec:
    """Register an env with the default registry; see :meth:`EnvRegistry.register`."""
    return registry.register(id, entry_point, max_turns=max_turns, override=override, **kwargs)


def make(id: str, /, **kwargs: Any) -> Env:
    """Build an env from the default registry; see :meth:`EnvRegistry.make`."""
    return registry.make(id, **kwargs)


def spec(id: str) -> EnvSpec:
    """The spec of ``id`` in the default registry; see :meth:`EnvRegistry.spec`."""
    return registry.spec(id)


__all__ = [
    "ENTRY_POINT_GROUP", "EnvCreator", "EnvRegistry", "EnvSpec",
    "format_env_id", "make", "parse_env_id", "register", "registry", "spec",
]
