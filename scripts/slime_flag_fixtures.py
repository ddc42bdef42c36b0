"""Record the flags slime's run scripts pass to ``train.py`` into a test fixture.

Usage::

    git clone https://github.com/THUDM/slime /tmp/slime      # or any checkout
    python scripts/slime_flag_fixtures.py /tmp/slime

Reads every ``scripts/run-*.sh``, ``scripts/models/*.sh`` and ``examples/**/*.sh`` of the
checkout at its ``HEAD`` (through ``git show``, so the work tree may differ) and keeps the
``--flags`` that reach slime's trainer: the items of bash arrays named ``*_ARGS`` and the
arguments after ``train.py`` / ``train_async.py``; comments are dropped. Each flag is written
once, with the first literal value tokens it was seen with (``VALUE`` for a shell expansion), to
``tests/fixtures/slime/run_script_flags.txt``, headed by the slime commit. The test
``tests/compat/test_slime_flags.py`` checks that agentrl accepts each or refuses it with a reason.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "slime" / "run_script_flags.txt"
ARRAY = re.compile(r"^\s*[A-Z_]*ARGS\+?=\(\s*$")
TRAINER = re.compile(r"\btrain(_async)?\.py\b")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def trainer_tokens(text: str) -> list[str]:
    """The tokens of ``*_ARGS=( ... )`` arrays and of the command lines that run ``train.py``."""
    tokens: list[str] = []
    lines = [line.split(" #")[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines()]
    in_array = in_command = False
    for line in lines:
        stripped = line.strip()
        if ARRAY.match(line):
            in_array = True
            continue
        if in_array and stripped.startswith(")"):
            in_array = False
            continue
        if TRAINER.search(line):
            in_command, stripped = True, TRAINER.split(line, maxsplit=1)[-1]
        if in_array or in_command:
            tokens += _split(stripped.rstrip("\\"))
        if in_command and not line.rstrip().endswith("\\"):
            in_command = False
    return tokens


EXPANSION = re.compile(r"\$\(\(.*?\)\)|\$\(.*?\)")
ARRAY_EXPANSION = re.compile(r'"?\$\{[A-Za-z_]+\[@\]\}"?')


def _split(line: str) -> list[str]:
    """Shell words of one line: a ``$(...)`` or ``$((...))`` is one word ``VALUE``, an array
    expansion ``${X[@]}`` is ``@ARRAY`` (it ends the values of the flag before it); a quote left
    open (a string spanning lines) splits on spaces."""
    line = ARRAY_EXPANSION.sub(" @ARRAY ", EXPANSION.sub("VALUE", line))
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def flags_with_values(tokens: list[str]) -> dict[str, list[str]]:
    """Each ``--flag`` with the non-flag tokens after it (first occurrence wins)."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for token in tokens:
        if token.startswith("--"):
            name, _, value = token.partition("=")
            current = None if name in found else [value] if value else []
            if current is not None:
                found[name] = current
        elif token == "@ARRAY":
            current = None
        elif current is not None and not token.startswith("$"):
            current.append(token)
        elif current is not None:
            current.append("VALUE")  # a shell variable: the script's value is not known here
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slime", type=Path, help="a checkout of THUDM/slime")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    commit = git(args.slime, "rev-parse", "HEAD").strip()
    scripts = [p for p in git(args.slime, "ls-tree", "-r", "--name-only", "HEAD").splitlines()
               if p.endswith(".sh") and (p.startswith(("scripts/run-", "scripts/models/", "examples/")))]
    flags: dict[str, list[str]] = {}
    for path in sorted(scripts):
        for flag, values in flags_with_values(trainer_tokens(git(args.slime, "show", f"HEAD:{path}"))).items():
            if flag not in flags or ("VALUE" in " ".join(flags[flag]) and "VALUE" not in " ".join(values)):
                flags[flag] = values  # the first literal value seen, else the first occurrence
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# flags of slime's run scripts ({len(scripts)} files: scripts/run-*.sh, scripts/models/*.sh, examples/**/*.sh)\n# slime commit {commit}\n"
    args.out.write_text(header + "".join(f"{' '.join([flag, *values])}\n" for flag, values in sorted(flags.items())))
    print(f"{len(flags)} flags from {len(scripts)} scripts -> {args.out}")


if __name__ == "__main__":
    main()
