"""A Search-R1-style tag env for tests: ``<search>q</search>`` gets ``<information>..</information>``,
``<answer>a</answer>`` ends the episode with exact-match reward."""

from __future__ import annotations

import re
from typing import Any

from agentrl.envs import Action, Env, Message, StepResult, Task

_SEARCH = re.compile(r"<search>(.*?)</search>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FACTS = {"capital of france": "Paris is the capital of France.", "capital of peru": "Lima is the capital of Peru."}


class TagSearchEnv(Env):
    def __init__(self, role: str = "user", prefill: str = "") -> None:
        self.role, self.prefill = role, prefill
        self.label = ""
        self.actions: list[str] = []

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self.label = str(task.label)
        prompt = f"Answer the question. Search with <search>query</search>, answer with <answer>x</answer>.\nQuestion: {task.prompt}"
        return [{"role": "user", "content": prompt}], {}

    async def step(self, action: Action) -> StepResult:
        self.actions.append(action.text)
        answer = _ANSWER.search(action.text)
        if answer:
            correct = answer.group(1).strip().lower() == self.label.lower()
            return StepResult([], 1.0 if correct else 0.0, True, False, {"answer": answer.group(1)})
        query = _SEARCH.search(action.text)
        if query is None:
            content = "No <search> or <answer> found. Use <search>query</search> or <answer>x</answer>."
        else:
            content = FACTS.get(query.group(1).strip().lower(), "No results.")
        observation = [{"role": self.role, "content": f"<information>{content}</information>"}]
        if self.prefill:  # the next turn continues an assistant message
            observation.append({"role": "assistant", "content": self.prefill})
        return StepResult(observation, 0.0, False, False, {})

    def example_tasks(self) -> list[Task]:
        return [Task("What is the capital of France?", "Paris", index=0), Task("What is the capital of Peru?", "Lima", index=1)]
