"""The built-in single-turn math env: the task's prompt is the question, one step scores it.

Single-turn math is just a one-step env: ``reset`` returns the question as a user message,
``step`` scores the answer's last ``\\boxed{}`` against the task's label with Math-Verify, in a
worker process off the event loop (:class:`agentrl.rewards.MathScorer`), and terminates.
"""

from __future__ import annotations

from typing import Any

from agentrl.envs.core import Action, Env, Message, StepResult, Task
from agentrl.rewards import MathScorer, shared_math_scorer

DEFAULT_INSTRUCTION = "Put your final answer within \\boxed{}."


class MathEnv(Env):
    """Answer a math question; reward 1.0 for a correct ``\\boxed{}`` answer.

    Args:
        instruction: appended to a string prompt on a new line; ``""`` for none.
        system_prompt: a system message placed first, or ``None`` for the template's default.
        format_reward: reward for a well-formed boxed answer that is wrong (default 0: only
            correct answers count; the format rate is reported in ``info`` either way). A small
            value shapes training when correct answers are too rare to give GRPO a signal.
        scorer: scores the answers, or ``None`` for the process-wide :func:`shared_math_scorer`.
            An answer whose scoring times out gets reward 0 and ``info["score_timeout"] = True``.
    """

    def __init__(
        self,
        instruction: str = DEFAULT_INSTRUCTION,
        system_prompt: str | None = None,
        format_reward: float = 0.0,
        scorer: MathScorer | None = None,
    ) -> None:
        self.instruction = instruction
        self.system_prompt = system_prompt
        self.format_reward = format_reward
        self.scorer = scorer or shared_math_scorer()
        self._label: Any = None

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict[str, Any]]:
        await super().reset(task, seed=seed)
        self._label = task.label
        messages: list[Message] = []
        if self.system_prompt is not None:
            messages.append({"role": "system", "content": self.system_prompt})
        if isinstance(task.prompt, str):
            content = f"{task.prompt}\n{self.instruction}" if self.instruction else task.prompt
            messages.append({"role": "user", "content": content})
        else:
            messages.extend(task.prompt)
        return messages, {}

    async def step(self, action: Action) -> StepResult:
        score = await self.scorer.score(action.text, self._label)
        reward = score.reward if score.reward > 0 else (self.format_reward if score.format_ok else 0.0)
        info = {"correct": score.reward > 0, "format_ok": score.format_ok, "extracted": score.extracted, "score_timeout": score.timed_out}
        return StepResult([], reward, True, False, info)

    def example_tasks(self) -> list[Task]:
        return [
            Task("What is 2 + 3?", label="5", index=0),
            Task("What is 7 * 6?", label="42", index=1),
        ]
