"""Scripted groups for the over-sampling and partial-rollout tests.

Each task has a *kind* that fixes its samples' replies (and so its group's rewards):

* ``RIGHT`` / ``WRONG``: every sample answers at once, right / wrong (zero reward variance).
* ``MIXED``: sample 0 right, sample 1 wrong, after a long preamble (ends after the short kinds).
* ``SLOW``: sample 0 answers wrong at once; sample 1 searches, then writes 3 tokens of the right
  answer and stalls until the policy's gate opens (so an abort lands mid-turn).
"""

from __future__ import annotations

from collections.abc import Sequence

from agentrl.envs import Task
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner
from tests.rollout.paced_policy import AbortablePacedPolicy, CountingEnv, PacedPolicy

RIGHT, WRONG, MIXED, SLOW = "right", "wrong", "mixed", "slow"
STALL_AT = 3
PREAMBLE = "Let me think this over carefully, one step at a time, before I give my final answer: "


def task(index: int) -> Task:
    return Task(f"Q{index}", f"A{index}", index=index)


def answer(index: int) -> str:
    return f"<answer>A{index}</answer>"


def policy(tokenizer, kinds: dict[int, str], *, abortable: bool = True) -> PacedPolicy:
    def reply(index: int, sample: int, turn: int) -> str:
        kind = kinds[index]
        if kind == SLOW and sample == 1:
            return "<search>capital of peru</search>" if turn == 0 else answer(index)
        right = kind == RIGHT or (kind == MIXED and sample == 0)
        return (PREAMBLE if kind == MIXED else "") + (answer(index) if right else "<answer>no</answer>")

    def stall(index: int, sample: int, turn: int) -> int | None:
        return STALL_AT if kinds[index] == SLOW and sample == 1 and turn == 1 else None

    return (AbortablePacedPolicy if abortable else PacedPolicy)(tokenizer, reply, stall)


def runner(tokenizer, scripted: PacedPolicy, envs: list[CountingEnv]) -> RolloutRunner:
    config = RolloutConfig(n_samples_per_prompt=2, max_new_tokens=64)
    return RolloutRunner(scripted, ChatRenderer(tokenizer), lambda: CountingEnv(envs), config)


def source(indices: Sequence[int]):
    """``next_tasks(n)`` over ``indices``, in order; raises when it runs dry."""
    remaining = list(indices)

    def next_tasks(n: int) -> list[Task]:
        if len(remaining) < n:
            raise AssertionError(f"the test source has {len(remaining)} tasks left, {n} asked")
        taken = [task(i) for i in remaining[:n]]
        del remaining[:n]
        return taken

    return next_tasks


def ids(groups) -> list[list[tuple[int, int]]]:
    """(task, sample) of each member of each group."""
    return [[(t.task_index, t.sample_index) for t in group] for group in groups]
