"""The Search-R1 example's config and report: the config's env asks the question again before the
answer turn and shows an answer of every question type; report.py's spread over runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from agentrl.envs import Action, Task, make

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "search_r1"))
from report import spread

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "search_r1"


async def test_the_example_env_restates_the_question_and_no_answer_type_is_the_examples():
    kwargs = yaml.safe_load((EXAMPLE / "grpo_smollm2.yaml").read_text())["env-kwargs"]
    env = make("contrib/SearchR1-v0", **{**kwargs, "search_enabled": False})
    question = "In which subregion is the country whose capital is Bangkok?"
    (prompt,), _ = await env.reset(Task(question, ["South-eastern Asia"], index=0))
    assert prompt["content"].endswith(f"Question: {question}\n")
    for answer in ("ATL", "Poseidonia", "Western Ocean"):  # the worked example's country: one answer per question type
        assert f"<answer> {answer} </answer>" in prompt["content"]
    await env.step(Action("<search> Bangkok </search>"))
    last = await env.step(Action("<search> Thailand </search>"))
    assert last.observation[0]["content"].endswith(f"Answer the question now: {question}")
    assert last.observation[1] == {"role": "assistant", "content": "<answer>"}
    await env.close()


def run(em_search: float, by_type: dict[str, float]) -> dict:
    return {"evals": [{"em_search": em_search, "em_control": 0.0}],
            "by_type": {kind: {"em_search": em, "em_control": 0.0} for kind, em in by_type.items()}}


def test_spread_gives_mean_sd_and_range_over_runs_per_question_type():
    stats = spread([run(0.5, {"2-hop subregion": 0.4}), run(0.7, {"2-hop subregion": 0.6})])
    assert stats["all/em_search"] == pytest.approx({"mean": 0.6, "sd": 0.1414, "min": 0.5, "max": 0.7}, abs=1e-4)
    assert stats["2-hop subregion/em_search"]["mean"] == pytest.approx(0.5)
    assert stats["2-hop subregion/em_control"] == {"mean": 0.0, "sd": 0.0, "min": 0.0, "max": 0.0}
