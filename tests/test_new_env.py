"""``agentrl new-env``: the package it writes installs (pip, in a venv over this one), is listed by
``agentrl envs``, and passes its own tests."""

from __future__ import annotations

import site
import subprocess
import sys
from pathlib import Path

import pytest

import agentrl
from agentrl.cli import main
from agentrl.scaffold import new_env


def run(*argv, cwd) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, argv))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_the_package_installs_is_listed_and_passes_its_own_tests(tmp_path, capsys, smollm2_dir):
    assert main(["new-env", "word-game", "--output", str(tmp_path)]) == 0
    root = tmp_path / "word-game"
    assert f"wrote {root}" in capsys.readouterr().out
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "README.md", "pyproject.toml", "tests/test_env.py", "word_game/__init__.py", "word_game/env.py"]
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", str(venv), cwd=tmp_path)
    # The agentrl under test and this interpreter's packages, also when it is itself a venv (which
    # --system-site-packages alone does not give; addsitedir runs their .pth files: editable installs).
    inner = next((venv / "lib").glob("python*/site-packages"))
    outer = [str(Path(agentrl.__file__).parents[1]), *site.getsitepackages()]
    (inner / "outer_site_packages.pth").write_text("import site; " + "; ".join(f"site.addsitedir({p!r})" for p in outer) + "\n")
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "--no-deps", "-q", str(root), cwd=tmp_path)
    assert "word_game/WordGame-v0" in run(python, "-m", "agentrl.cli", "envs", cwd=tmp_path).stdout.split()
    tests = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests"), cwd=tmp_path)
    assert "3 passed" in tests.stdout


@pytest.mark.parametrize(("name", "says"), [("9lives", "use a letter"), ("a b", "use a letter")])
def test_bad_names_and_existing_directories_are_refused(tmp_path, capsys, name, says):
    assert main(["new-env", name, "--output", str(tmp_path)]) == 2
    assert says in capsys.readouterr().err
    new_env("taken", tmp_path)
    assert main(["new-env", "taken", "--output", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
