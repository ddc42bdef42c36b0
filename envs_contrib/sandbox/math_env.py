"""Math with a Python tool (``contrib/PythonMath-v0``): the model may run code in the sandbox
(:class:`~envs_contrib.sandbox.sandbox.PythonSandbox`) before it answers in ``\\boxed{}``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from agentrl.envs import Task
from agentrl.envs.tool_env import ToolEnv
from agentrl.rewards import MathScorer, shared_math_scorer
from envs_contrib.sandbox.sandbox import PythonSandbox, SandboxLimits

SYSTEM_PROMPT = (
    "Solve the math problem. You may run Python code with the python tool: write "
    '<tool_call>{"name": "python", "arguments": {"code": "print(2**10)"}}</tool_call> and you get back what it printed. '
    "Tools: {tools}\nWhen you know the answer, write it as \\boxed{answer} without a tool call."
)


def python_tool(sandbox: PythonSandbox) -> Callable[[str], Awaitable[str]]:
    """The sandbox as a tool function (its schema comes from the signature and docstring)."""

    async def python(code: str) -> str:
        """Run a Python program in a sandbox (no network, no files outside its directory) and get its exit code and output.

        Args:
            code: the whole program; print what you want to see.
        """
        return (await sandbox.run(code)).message()

    return python


class PythonMathEnv(ToolEnv):
    """Answer a math question, running Python as often as needed; reward 1 for a correct
    ``\\boxed{}`` answer (Math-Verify, off the event loop).

    Args:
        limits: the sandbox's limits per run.
        system_prompt: the first message; ``{tools}`` becomes the tool's schema.
        max_output_tokens, tokenizer: cut each tool message to that many tokens (see ToolEnv).
        scorer: scores answers; ``None``: the process-wide one.
    """

    def __init__(self, limits: SandboxLimits | None = None, *, system_prompt: str = SYSTEM_PROMPT, max_output_tokens: int | None = None,
                 tokenizer: object = None, scorer: MathScorer | None = None) -> None:
        self.scorer = scorer or shared_math_scorer()
        sandbox = PythonSandbox(limits or SandboxLimits())
        super().__init__([python_tool(sandbox)], system_prompt=system_prompt, max_output_tokens=max_output_tokens, tokenizer=tokenizer,  # type: ignore[arg-type]
                         timeout_s=sandbox.limits.wall_s + 30)

    async def score(self, text: str, task: Task) -> float:
        return (await self.scorer.score(text, task.label)).reward

    def example_tasks(self) -> list[Task]:
        return [Task("What is 2**20 - 12345?", label="1036231", index=0), Task("What is the sum of the digits of 3**30?", label="63", index=1)]
