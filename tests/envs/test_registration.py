"""Tests of agentrl.envs.registration: ids, specs, scoped registries, entry-point discovery."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentrl.envs import Action, EnvRegistry, EnvSpec, MaxTurns, OrderEnforcing, Task, registration
from agentrl.errors import EnvStateError, RegistryError
from tests.envs.testing_env import GenericTestEnv

GENERIC = "tests.envs.testing_env:GenericTestEnv"


@pytest.fixture
def reg() -> EnvRegistry:
    reg = EnvRegistry()
    reg.register("test/Generic-v0", GENERIC)
    reg.register("test/Generic-v1", GENERIC, max_turns=2)
    reg.register("Plain", GenericTestEnv)
    return reg


def test_make_builds_the_env_with_kwargs_merged_and_the_guard_outermost(reg: EnvRegistry) -> None:
    reg.register("test/Kw-v0", GENERIC, a=1, b=2)
    env = reg.make("test/Kw-v0", b=3, c=4)
    assert type(env) is OrderEnforcing and isinstance(env.env, GenericTestEnv)
    assert env.env.kwargs == {"a": 1, "b": 3, "c": 4}
    assert reg.spec("test/Kw-v0").kwargs == {"a": 1, "b": 2}


async def test_make_applies_max_turns_inside_the_order_guard(reg: EnvRegistry) -> None:
    env = reg.make("test/Generic-v1")
    assert type(env) is OrderEnforcing and type(env.env) is MaxTurns
    await env.reset(Task("hi"))
    assert not (await env.step(Action("a"))).truncated
    last = await env.step(Action("b"))
    assert (last.terminated, last.truncated, last.info["truncated_by"]) == (False, True, "max_turns")
    with pytest.raises(EnvStateError, match="after the episode ended"):
        await env.step(Action("c"))


def test_bare_name_picks_the_latest_version(reg: EnvRegistry) -> None:
    reg.register("test/Generic-v10", GENERIC)
    assert reg.spec("test/Generic").id == "test/Generic-v10"
    assert reg.spec("Plain").id == "Plain"


def test_spec_parts_and_ids(reg: EnvRegistry) -> None:
    spec = reg.spec("test/Generic-v1")
    assert (spec.namespace, spec.name, spec.version, spec.max_turns) == ("test", "Generic", 1, 2)
    assert (reg.spec("Plain").namespace, reg.spec("Plain").version) == (None, None)
    assert reg.ids() == ["Plain", "test/Generic-v0", "test/Generic-v1"]


def test_override_replaces_a_spec(reg: EnvRegistry) -> None:
    reg.register("Plain", GENERIC, max_turns=5, override=True)
    assert reg.spec("Plain") == EnvSpec("Plain", GENERIC, {}, 5)


@pytest.mark.parametrize(
    ("env_id", "fragment"),
    [
        ("bad id", "malformed env id 'bad id': expected '[namespace/]Name[-vN]'"),
        ("a/b/c-v0", "malformed env id 'a/b/c-v0'"),
        ("test/Generic-v01", "malformed env id 'test/Generic-v01': write it as 'test/Generic-v1'"),
        ("test/Genric-v0", "unknown env id 'test/Genric-v0'. Did you mean 'test/Generic-v0'"),
        ("tset/Generic", "unknown env id 'tset/Generic'. Did you mean 'test/Generic'?"),
        ("zzz/Qqqq-v3", "unknown env id 'zzz/Qqqq-v3'. Import the module that registers it"),
        ("test/Generic-v7", "unknown version 'test/Generic-v7'; registered versions: test/Generic-v0, test/Generic-v1"),
        ("Plain-v1", "unknown version 'Plain-v1'; registered versions: Plain"),
        ("no_such_module_xyz:test/Generic-v0", "cannot import module 'no_such_module_xyz'"),
    ],
)
def test_lookup_errors(reg: EnvRegistry, env_id: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as caught:
        reg.make(env_id)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("env_id", "entry_point", "options", "fragment"),
    [
        ("Plain", GENERIC, {}, "env id 'Plain' is already registered; pass override=True"),
        ("test/Generic", GENERIC, {}, "cannot register 'test/Generic' beside 'test/Generic-v0'"),
        ("Plain-v0", GENERIC, {}, "cannot register 'Plain-v0' beside 'Plain'"),
        ("New-v0", "pkg.module.Class", {}, "malformed entry point 'pkg.module.Class'; expected 'pkg.module:Attr'"),
        ("New-v0", 42, {}, "entry point must be a 'pkg.module:Attr' string or a callable, got int"),
        ("New-v0", GENERIC, {"max_turns": 0}, "max_turns must be an int >= 1 or None, got 0"),
        ("new env", GENERIC, {}, "malformed env id 'new env'"),
    ],
)
def test_register_errors(
    reg: EnvRegistry, env_id: str, entry_point: object, options: dict[str, object], fragment: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        reg.register(env_id, entry_point, **options)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("entry_point", "fragment"),
    [
        ("tests.envs.testing_env:Nope", "env 'x/Bad-v0': cannot load entry point 'tests.envs.testing_env:Nope': AttributeError"),
        ("no_such_module_xyz:Env", "cannot load entry point 'no_such_module_xyz:Env': ModuleNotFoundError"),
        ("tests.envs.testing_env:__doc__", "entry point 'tests.envs.testing_env:__doc__' is not callable"),
        (lambda: object(), "returned object, not an agentrl.envs.Env"),
    ],
)
def test_broken_entry_points_fail_at_make(reg: EnvRegistry, entry_point: object, fragment: str) -> None:
    reg.register("x/Bad-v0", entry_point)  # type: ignore[arg-type]
    with pytest.raises(RegistryError) as caught:
        reg.make("x/Bad-v0")
    assert fragment in str(caught.value)


def test_spec_json_round_trip() -> None:
    spec = EnvSpec("test/Generic-v3", GENERIC, {"a": [1, 2], "b": "x"}, max_turns=4)
    assert EnvSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("make_json", "fragment"),
    [
        (lambda: EnvSpec("X-v0", GenericTestEnv).to_json(), "(GenericTestEnv) cannot be serialised"),
        (lambda: EnvSpec("X-v0", GENERIC, {"f": object()}).to_json(), "kwargs are not JSON-serialisable"),
        (lambda: EnvSpec.from_json('{"id": "X-v0"}'), "not a JSON env spec"),
        (lambda: EnvSpec.from_json("nope"), "not a JSON env spec"),
        (lambda: EnvSpec.from_json('{"id": "X v0", "entry_point": "a:b"}'), "malformed env id 'X v0'"),
    ],
)
def test_spec_json_errors(make_json: object, fragment: str) -> None:
    with pytest.raises(RegistryError) as caught:
        make_json()  # type: ignore[operator]
    assert fragment in str(caught.value)


# ----------------------------------------------------------------- the default registry


@pytest.fixture
def default_registry(monkeypatch: pytest.MonkeyPatch) -> EnvRegistry:
    """A fresh registry standing in for the default one, used by module-level functions."""
    fresh = EnvRegistry()
    monkeypatch.setattr(registration, "registry", fresh)
    return fresh


def test_module_functions_use_the_default_registry(default_registry: EnvRegistry) -> None:
    registration.register("test/Default-v0", GENERIC, a=1)
    assert default_registry.ids() == ["test/Default-v0"]
    assert registration.spec("test/Default").kwargs == {"a": 1}
    env = registration.make("test/Default-v0").unwrapped
    assert isinstance(env, GenericTestEnv) and env.kwargs == {"a": 1}


def test_module_prefix_imports_the_registering_module(
    default_registry: EnvRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "registers_on_import.py").write_text(
        f"from agentrl.envs import register\nregister('tmpmod/Thing-v0', {GENERIC!r}, max_turns=3)\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    monkeypatch.delitem(sys.modules, "registers_on_import", raising=False)
    with pytest.raises(RegistryError, match="unknown env id 'tmpmod/Thing-v0'"):
        registration.make("tmpmod/Thing-v0")
    env = registration.make("registers_on_import:tmpmod/Thing-v0")
    assert type(env.unwrapped) is GenericTestEnv and default_registry.spec("tmpmod/Thing").max_turns == 3


# ----------------------------------------------------------------- entry points

THIRDPARTY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "thirdparty-envs"
version = "1.0"

[project.entry-points."agentrl.envs"]
"thirdparty/Echo-v0" = "thirdparty_envs:EchoEnv"
"thirdparty/Missing-v0" = "thirdparty_envs:NoSuchEnv"
"thirdparty/Gone-v0" = "thirdparty_gone:Env"
"thirdparty/NoAttr-v0" = "thirdparty_envs"
"bad id!" = "thirdparty_envs:EchoEnv"
"thirdparty/Loop-v0" = "thirdparty_envs:LOOP_SPEC"
"thirdparty/Forever-v0" = "thirdparty_envs:ForeverEnv"
"thirdparty/Mislabeled-v0" = "thirdparty_envs:LOOP_SPEC"
"thirdparty/Nested-v0" = "thirdparty_envs:NESTED_SPEC"

[tool.setuptools]
py-modules = ["thirdparty_envs"]
"""

THIRDPARTY_MODULE = """\
from agentrl.envs import Env, EnvSpec, StepResult, Task


class EchoEnv(Env):
    def __init__(self, prefix="echo: "):
        self.prefix = prefix

    async def reset(self, task, *, seed=None):
        await super().reset(task, seed=seed)
        return [{"role": "user", "content": task.prompt}], {}

    async def step(self, action):
        return StepResult([{"role": "user", "content": self.prefix + action.text}], 0.0, True, False, {})


class ForeverEnv(Env):
    def __init__(self, greeting):
        self.greeting = greeting

    async def reset(self, task, *, seed=None):
        await super().reset(task, seed=seed)
        return [{"role": "user", "content": f"{self.greeting} {task.prompt}"}], {}

    async def step(self, action):
        return StepResult([{"role": "user", "content": "again"}], 0.0, False, False, {})

    def example_tasks(self):
        return [Task("say anything")]


LOOP_SPEC = EnvSpec("thirdparty/Loop-v0", "thirdparty_envs:ForeverEnv", {"greeting": "hi"}, max_turns=2)
NESTED_SPEC = EnvSpec("thirdparty/Nested-v0", "thirdparty_envs:NESTED_SPEC")
"""


@pytest.fixture(scope="module")
def thirdparty_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third-party package built from its pyproject.toml and pip-installed into a directory."""
    source = tmp_path_factory.mktemp("thirdparty_src")
    (source / "pyproject.toml").write_text(THIRDPARTY_PYPROJECT)
    (source / "thirdparty_envs.py").write_text(THIRDPARTY_MODULE)
    site = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--target", str(site), str(source)],
        check=True, capture_output=True,
    )
    return site


@pytest.fixture
def thirdparty(thirdparty_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The third-party package on sys.path (so importlib.metadata finds it) for one test."""
    monkeypatch.syspath_prepend(thirdparty_site)
    yield
    sys.modules.pop("thirdparty_envs", None)


async def test_discovery_registers_lazily_and_make_runs_the_env(thirdparty: None) -> None:
    reg = EnvRegistry()
    added = reg.discover_entry_points()
    assert {"thirdparty/Echo-v0", "thirdparty/Missing-v0", "thirdparty/Gone-v0"} <= set(added)
    assert "thirdparty_envs" not in sys.modules
    assert reg.spec("thirdparty/Echo").distribution == "thirdparty-envs"
    env = reg.make("thirdparty/Echo-v0", prefix="> ")
    await env.reset(Task("hi"))
    assert (await env.step(Action("hello"))).observation == [{"role": "user", "content": "> hello"}]
    assert reg.discover_entry_points() == []


@pytest.mark.parametrize(
    ("env_id", "fragment"),
    [
        ("thirdparty/Missing-v0",
         "env 'thirdparty/Missing-v0' (entry point of distribution 'thirdparty-envs'): cannot load entry "
         "point 'thirdparty_envs:NoSuchEnv': AttributeError"),
        ("thirdparty/Gone-v0",
         "(entry point of distribution 'thirdparty-envs'): cannot load entry point 'thirdparty_gone:Env': "
         "ModuleNotFoundError: No module named 'thirdparty_gone'"),
        ("thirdparty/NoAttr-v0",
         "the 'agentrl.envs' entry point 'thirdparty/NoAttr-v0' = 'thirdparty_envs' of distribution "
         "'thirdparty-envs' is invalid"),
        ("bad id!", "entry point 'bad id!' = 'thirdparty_envs:EchoEnv' of distribution 'thirdparty-envs' is invalid"),
    ],
)
def test_broken_third_party_entry_points(thirdparty: None, env_id: str, fragment: str) -> None:
    reg = EnvRegistry()
    reg.discover_entry_points()
    with pytest.raises(RegistryError) as caught:
        reg.make(env_id)
    assert fragment in str(caught.value)


def test_invalid_entry_points_are_logged_not_raised(
    thirdparty: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=registration.__name__):
        assert "thirdparty/Echo-v0" in EnvRegistry().discover_entry_points()
    assert "'bad id!' = 'thirdparty_envs:EchoEnv' of distribution 'thirdparty-envs' is invalid" in caplog.text


def test_registering_a_discovered_id_in_code_names_the_distribution(thirdparty: None) -> None:
    reg = EnvRegistry()
    reg.discover_entry_points()
    with pytest.raises(RegistryError, match="already registered \\(entry point of distribution 'thirdparty-envs'\\)"):
        reg.register("thirdparty/Echo-v0", GENERIC)


def test_code_registration_wins_over_a_later_discovery(thirdparty: None) -> None:
    reg = EnvRegistry()
    reg.register("thirdparty/Echo-v0", GENERIC)
    assert "thirdparty/Echo-v0" not in reg.discover_entry_points()
    assert reg.spec("thirdparty/Echo-v0").entry_point == GENERIC


def test_discovering_registry_discovers_once_on_first_lookup(
    thirdparty: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    entry_points = importlib.metadata.entry_points

    def counting_entry_points(**kwargs: str) -> object:
        calls.append(kwargs)
        return entry_points(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", counting_entry_points)
    reg = EnvRegistry(discover=True)
    reg.register("Mine-v0", GENERIC)
    assert calls == []
    assert "thirdparty/Echo-v0" in reg.ids()
    reg.spec("thirdparty/Echo")
    assert calls == [{"group": "agentrl.envs"}]


def test_default_registry_discovers_entry_points_in_a_fresh_process(thirdparty_site: Path) -> None:
    script = textwrap.dedent("""
        import sys
        from agentrl.envs import make, registry
        listed = "thirdparty/Echo-v0" in registry.ids()
        imported = "thirdparty_envs" in sys.modules
        print(listed, imported, type(make("thirdparty/Echo").unwrapped).__name__)
    """)
    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(thirdparty_site), str(repo_root)])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.split() == ["True", "False", "EchoEnv"]


async def test_an_entry_point_may_name_an_env_spec_with_max_turns_and_kwargs(thirdparty: None) -> None:
    reg = EnvRegistry()
    reg.discover_entry_points()
    assert "thirdparty_envs" not in sys.modules and reg.spec("thirdparty/Loop-v0").max_turns is None  # still lazy
    resolved = reg.spec("thirdparty/Loop-v0").resolve()
    assert (resolved.max_turns, resolved.kwargs, resolved.distribution) == (2, {"greeting": "hi"}, "thirdparty-envs")
    env = reg.make("thirdparty/Loop-v0")
    assert type(env.env) is MaxTurns and (await env.reset(Task("x")))[0][0]["content"] == "hi x"
    assert not (await env.step(Action("a"))).truncated and (await env.step(Action("b"))).truncated
    longer = dataclasses.replace(reg.spec("thirdparty/Loop-v0"), max_turns=3).make(greeting="yo")  # the caller's settings win
    assert (await longer.reset(Task("x")))[0][0]["content"] == "yo x" and longer.env.max_turns == 3


@pytest.mark.parametrize(
    ("env_id", "fragment"),
    [
        ("thirdparty/Mislabeled-v0", "env 'thirdparty/Mislabeled-v0' (entry point of distribution 'thirdparty-envs'): its entry point "
         "'thirdparty_envs:LOOP_SPEC' names the spec of 'thirdparty/Loop-v0'; an entry point's name and its EnvSpec's id must agree"),
        ("thirdparty/Nested-v0", "the EnvSpec that entry point 'thirdparty_envs:NESTED_SPEC' names must name an Env class or factory, "
         "not another EnvSpec"),
    ],
)
def test_an_entry_point_spec_is_checked_when_made(thirdparty: None, env_id: str, fragment: str) -> None:
    reg = EnvRegistry()
    reg.discover_entry_points()
    with pytest.raises(RegistryError) as caught:
        reg.make(env_id)
    assert fragment in str(caught.value)


def agentrl_cli(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``agentrl ARGS`` in a fresh process that has the third-party package installed."""
    repo_root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(repo_root)])}
    return subprocess.run([sys.executable, "-m", "agentrl.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_check_env_gets_max_turns_and_kwargs_for_entry_point_envs(thirdparty_site: Path) -> None:
    from_spec = agentrl_cli(thirdparty_site, "check-env", "thirdparty/Loop-v0")
    assert from_spec.returncode == 0 and "ok   episode ends within max_steps: 2 step(s)" in from_spec.stdout, from_spec.stdout + from_spec.stderr
    from_flags = agentrl_cli(thirdparty_site, "check-env", "thirdparty/Forever-v0", "--max-turns", "3", "--env-kwargs", '{"greeting": "hey"}')
    assert from_flags.returncode == 0 and "ok   episode ends within max_steps: 3 step(s)" in from_flags.stdout, from_flags.stdout + from_flags.stderr
    bad = agentrl_cli(thirdparty_site, "check-env", "thirdparty/Forever-v0", "--env-kwargs", "[1]")
    assert bad.returncode == 2 and "error: argument --env-kwargs: expected a JSON object such as '{\"key\": 1}', got list" in bad.stderr
