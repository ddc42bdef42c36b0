"""``agentrl new-env NAME``: a new env as an installable package.

It writes ``NAME/`` with a ``pyproject.toml`` (the env's ``agentrl.envs`` entry point naming an
``EnvSpec`` with a turn limit), the package with one env (a two-turn word game that shows the
contract: opening messages, a corrective observation for a malformed answer, a reward, seeding
with ``self.rng``), a test that plays it with the scripted policy through the rollout runner and
runs ``check_env`` on it, and a README saying how to install, test, list and train it.
"""

from __future__ import annotations

import re
from pathlib import Path

from agentrl.errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")

PYPROJECT = '''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "{cls}: an agentrl environment"
requires-python = ">=3.11"
dependencies = ["agentrl"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-asyncio>=0.24"]

[project.entry-points."agentrl.envs"]
"{env_id}" = "{pkg}.env:SPEC"

[tool.setuptools.packages.find]
include = ["{pkg}*"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
'''

ENV = '''"""{cls}: reverse a word. The model answers inside <answer>...</answer>; an answer without the
tags gets a corrective observation (a model mistake is an observation, never an exception)."""

from __future__ import annotations

import re
from typing import Any

from agentrl.envs import Action, Env, EnvSpec, Message, StepResult, Task

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
WORDS = ("agent", "reward", "token", "policy", "episode")


class {cls}(Env):
    """Reverse the task's word (or, without one, a word drawn with ``self.rng``); reward 1 when right."""

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)  # seeds self.rng
        self.word = str(task.prompt) or self.rng.choice(WORDS)
        prompt = f"Write the word {{self.word!r}} backwards, inside <answer>...</answer>."
        return [{{"role": "user", "content": prompt}}], {{}}

    async def step(self, action: Action) -> StepResult:
        match = ANSWER.search(action.text)
        if match is None:
            return StepResult([{{"role": "user", "content": "Put your answer inside <answer>...</answer>."}}], 0.0, False, False, {{"formatted": False}})
        correct = match.group(1).strip() == self.word[::-1]
        return StepResult([], float(correct), True, False, {{"formatted": True, "correct": correct}})

    def example_tasks(self) -> list[Task]:
        return [Task("agent", label="tnega", index=0), Task("reward", label="drawer", index=1)]


SPEC = EnvSpec("{env_id}", "{pkg}.env:{cls}", max_turns=3)
"""What the entry point names: the env with a turn limit."""
'''

TEST = '''"""{cls} played by the scripted policy through agentrl's rollout runner, and its contract check."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from agentrl.envs import Task, check_env, make
from agentrl.models.resolve import resolve_model
from agentrl.policies import ScriptedPolicy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))


async def test_a_formatted_right_answer_after_a_malformed_one_earns_1(tokenizer):
    policy = ScriptedPolicy(tokenizer, ["tnega", "<answer>tnega</answer>"])
    runner = RolloutRunner(policy, ChatRenderer(tokenizer), lambda: make("{env_id}"), RolloutConfig())
    [played] = await runner.run([Task("agent", index=0)], progress=False)
    assert (played.termination, played.reward, played.metrics["turns"]) == (Termination.DONE, 1.0, 2)


async def test_the_turn_limit_truncates(tokenizer):
    runner = RolloutRunner(ScriptedPolicy(tokenizer, ["no tags"]), ChatRenderer(tokenizer), lambda: make("{env_id}"), RolloutConfig())
    [played] = await runner.run([Task("agent", index=0)], progress=False)
    assert (played.termination, played.reward, played.metrics["turns"]) == (Termination.MAX_TURNS, 0.0, 3)


async def test_check_env(tokenizer):
    report = await check_env(lambda: make("{env_id}"), tokenizer=tokenizer)
    assert report.ok, str(report)
'''

README = '''# {dist}

`{env_id}`: an [agentrl](https://pypi.org/project/agentrl/) environment, registered through the
`agentrl.envs` entry point in `pyproject.toml` (it names `{pkg}.env:SPEC`, an `EnvSpec` with a
turn limit of 3).

```bash
pip install -e '.[test]'        # install it (agentrl finds it by its entry point)
agentrl envs                    # lists {env_id}
pytest                          # the scripted-policy test and check_env
agentrl check-env {env_id} --hf-checkpoint smollm2-135m
agentrl rollout --env {env_id} --prompt-data tasks.jsonl --hf-checkpoint smollm2-135m --output out.jsonl
```

Edit `{pkg}/env.py`: `reset` returns the opening messages, `step` answers each action with new
messages, a reward and `terminated`/`truncated` (see `agentrl.envs.core.Env`).
'''


def new_env(name: str, output: Path) -> Path:
    """Write the package of a new env named ``name`` under ``output``; returns its directory.

    Raises:
        ConfigError: ``name`` is not a valid name, or its directory exists already.
    """
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"new-env NAME {name!r}: use a letter, then letters, digits, '_' or '-' (at most 64)")
    pkg = name.replace("-", "_").lower()
    cls = "".join(part[:1].upper() + part[1:] for part in re.split(r"[-_]", name) if part) + "Env"
    values = {"dist": name, "pkg": pkg, "cls": cls, "env_id": f"{pkg}/{cls.removesuffix('Env') or cls}-v0"}
    root = output / name
    if root.exists():
        raise ConfigError(f"new-env: {root} exists already; choose another NAME or --output")
    files = {"pyproject.toml": PYPROJECT, f"{pkg}/__init__.py": '"""{cls}."""\n\nfrom {pkg}.env import SPEC, {cls}\n\n__all__ = ["SPEC", "{cls}"]\n',
             f"{pkg}/env.py": ENV, "tests/test_env.py": TEST, "README.md": README}
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
    return root
