"""``check_env``: a contract checker for env authors.

It resets and steps the env with fixed tasks, seeds and actions and checks what every part of
agentrl relies on. Each failure names the likely cause. Run it in your env's tests::

    report = await check_env(lambda: MyEnv(), tasks=[...], tokenizer=tok)   # raises on failure
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.envs.core import Action, Env, Message, Task, ToolCall
from agentrl.envs.tool_calls import parse_hermes
from agentrl.errors import EnvError, EnvStateError

PROBE_ACTIONS: tuple[Action, ...] = (
    Action("Let me think step by step. The answer is \\boxed{0}."),
    Action("<search>capital of France</search>"),
    Action("<answer>Paris</answer>"),
)
"""Ordinary actions the checker plays (override with ``actions=``)."""

MALFORMED_ACTIONS: tuple[Action, ...] = (
    Action("<tool_call>{not json</tool_call>", parse_hermes("<tool_call>{not json</tool_call>")),
    Action(
        '<tool_call>{"name": "no_such_tool_xyz", "arguments": {}}</tool_call>',
        (ToolCall(raw='<tool_call>{"name": "no_such_tool_xyz", "arguments": {}}</tool_call>', name="no_such_tool_xyz", arguments={}),),
    ),
    Action('<tool_call>{"name": "se', parse_hermes('<tool_call>{"name": "se'), finish_reason="length"),
    Action("<search>unclosed tag", finish_reason="length"),
    Action(""),
)
"""Model mistakes an env must answer with an observation, never an exception."""

BLOCKING_LIMIT_S = 0.25
"""Longest the event loop may stall inside one env call."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str = ""


@dataclass
class CheckReport:
    """Every check's outcome; ``str(report)`` is the readable report."""

    env: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    def __str__(self) -> str:
        lines = [f"check_env {self.env}: {'PASSED' if self.ok else 'FAILED'}"]
        for r in self.results:
            lines.append(f"  {'ok  ' if r.passed else 'FAIL'} {r.name}" + (f": {r.detail}" if r.detail else ""))
        return "\n".join(lines)


class EnvCheckError(EnvError):
    """The env broke its contract; the message is the whole report."""


@dataclass(frozen=True)
class _Played:
    """An episode's observable outcome, for comparisons."""

    opening: list[Message]
    steps: list[tuple[list[Message], float, bool, bool]]


async def check_env(
    env_factory: Callable[[], Env],
    *,
    tasks: Sequence[Task] | None = None,
    actions: Sequence[Action] = PROBE_ACTIONS,
    tokenizer: Any = None,
    chat_template: str | None = None,
    max_steps: int = 16,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check that envs made by ``env_factory`` keep the :class:`~agentrl.envs.Env` contract.

    Args:
        env_factory: makes a fresh env (e.g. ``lambda: agentrl.envs.make(id)``).
        tasks: tasks to reset with; default: the env's ``example_tasks()``.
        actions: what the policy "says" on successive steps (the last one repeats).
        tokenizer: a Hugging Face tokenizer; enables the chat-template conformance check.
        chat_template: a Jinja template overriding the tokenizer's.
        max_steps: an episode that has not ended after this many steps fails the check.
        raise_on_failure: raise :class:`EnvCheckError` (with the report) when a check fails.
    """
    probe = env_factory()
    tasks = list(tasks) if tasks else probe.example_tasks()
    await probe.close()
    report = CheckReport(env=repr(probe))
    if not tasks:
        report.results.append(CheckResult("tasks", False, "no tasks: pass tasks=... or implement Env.example_tasks()"))
    else:
        checker = _Checker(env_factory, tasks, actions, max_steps)
        for name, check in checker.checks(tokenizer, chat_template):
            report.results.append(await _run_check(name, check))
    if raise_on_failure and not report.ok:
        raise EnvCheckError(str(report))
    return report


async def _run_check(name: str, check: Callable[[], Awaitable[str]]) -> CheckResult:
    try:
        return CheckResult(name, True, await check())
    except _Failed as e:
        return CheckResult(name, False, str(e))
    except Exception as e:
        return CheckResult(name, False, f"raised {type(e).__name__}: {e}")


class _Failed(Exception):
    pass


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _Failed(message)


class _Checker:
    def __init__(self, factory: Callable[[], Env], tasks: list[Task], actions: Sequence[Action], max_steps: int) -> None:
        self.factory, self.tasks, self.actions, self.max_steps = factory, tasks, list(actions), max_steps

    def checks(self, tokenizer: Any, chat_template: str | None) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
        checks = [
            ("reset returns (messages, info)", self.reset_contract),
            ("step returns StepResult with JSON-serialisable info", self.step_contract),
            ("episode ends within max_steps", self.episode_ends),
            ("step after the end raises EnvStateError", self.step_after_end),
            ("close() twice is safe", self.close_twice),
            ("same seed gives the same episode", self.seed_determinism),
            ("malformed and unknown tool calls become observations", self.malformed_actions),
            ("env calls do not block the event loop", self.no_blocking),
            ("step timeouts trip", self.timeout_trips),
            ("parallel instances share no state", self.isolation),
        ]
        if tokenizer is not None:
            checks.append(("chat template conformance", lambda: self.template_conformance(tokenizer, chat_template)))
        return checks

    def action(self, step: int) -> Action:
        return self.actions[min(step, len(self.actions) - 1)]

    async def play(self, env: Env, task: Task, seed: int | None) -> _Played:
        opening, info = await env.reset(task, seed=seed)
        played = _Played(opening, [])
        for step in range(self.max_steps):
            obs, reward, terminated, truncated, _ = await env.step(self.action(step))
            played.steps.append((obs, reward, terminated, truncated))
            if terminated or truncated:
                break
        return played

    async def reset_contract(self) -> str:
        env = self.factory()
        try:
            result = await env.reset(self.tasks[0], seed=0)
            _expect(isinstance(result, tuple) and len(result) == 2, f"reset returned {type(result).__name__}, expected a (messages, info) tuple")
            messages, info = result
            _check_messages(messages, "reset")
            _expect(len(messages) > 0, "reset returned no messages: the policy would have nothing to answer")
            _check_info(info, "reset")
        finally:
            await env.close()
        return ""

    async def step_contract(self) -> str:
        env = self.factory()
        try:
            await env.reset(self.tasks[0], seed=0)
            result = await env.step(self.action(0))
            _expect(isinstance(result, tuple) and len(result) == 5, f"step returned {result!r:.100}, expected StepResult(observation, reward, terminated, truncated, info)")
            obs, reward, terminated, truncated, info = result
            _check_messages(obs, "step")
            _expect(isinstance(reward, (int, float)) and not isinstance(reward, bool), f"reward is {reward!r}, expected a float")
            _expect(reward == reward and abs(reward) != float("inf"), f"reward is {reward}, expected a finite number")
            _expect(isinstance(terminated, bool) and isinstance(truncated, bool), "terminated and truncated must be bools")
            _check_info(info, "step")
        finally:
            await env.close()
        return ""

    async def episode_ends(self) -> str:
        env = self.factory()
        try:
            played = await self.play(env, self.tasks[0], seed=0)
        finally:
            await env.close()
        _, _, terminated, truncated = played.steps[-1]
        _expect(terminated or truncated, f"the episode did not end in {self.max_steps} steps: give the env a turn limit (register it with max_turns=...)")
        return f"{len(played.steps)} step(s)"

    async def step_after_end(self) -> str:
        env = self.factory()
        try:
            await self.play(env, self.tasks[0], seed=0)
            try:
                await env.step(self.action(0))
            except EnvStateError as e:
                _expect(bool(str(e)), "EnvStateError has no message")
                return ""
            except Exception as e:
                raise _Failed(f"raised {type(e).__name__} instead of EnvStateError: {e}") from None
            raise _Failed("step after the episode ended returned normally; make the env with agentrl.envs.make (it adds OrderEnforcing) or raise EnvStateError")
        finally:
            await env.close()

    async def close_twice(self) -> str:
        env = self.factory()
        await env.reset(self.tasks[0], seed=0)
        await env.close()
        await env.close()
        return ""

    async def seed_determinism(self) -> str:
        outcomes = []
        for _ in range(2):
            env = self.factory()
            try:
                outcomes.append(await self.play(env, self.tasks[0], seed=123))
            finally:
                await env.close()
        _expect(outcomes[0] == outcomes[1], "two episodes with the same task, seed and actions differ: draw randomness from self.rng, seeded by reset(seed=...)")
        return ""

    async def malformed_actions(self) -> str:
        for action in MALFORMED_ACTIONS:
            env = self.factory()
            try:
                await env.reset(self.tasks[0], seed=0)
                try:
                    result = await env.step(action)
                except EnvStateError:
                    raise
                except Exception as e:
                    raise _Failed(f"step({action.text!r}) raised {type(e).__name__}: {e}; answer model mistakes with an observation") from None
                _check_messages(result[0], "step")
            finally:
                await env.close()
        return f"{len(MALFORMED_ACTIONS)} malformed actions"

    async def no_blocking(self) -> str:
        worst = 0.0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst, last = max(worst, now - last), now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        env = self.factory()
        try:
            await self.play(env, self.tasks[0], seed=0)
        finally:
            await env.close()
            stop.set()
            await tick
        _expect(worst < BLOCKING_LIMIT_S, f"the event loop stalled for {worst:.2f}s inside the env: run blocking code with agentrl.envs.from_sync or asyncio.to_thread")
        return f"longest stall {worst * 1000:.0f} ms"

    async def timeout_trips(self) -> str:
        env = self.factory()
        try:
            await env.reset(self.tasks[0], seed=0)
            step = asyncio.ensure_future(env.step(self.action(0)))
            await asyncio.sleep(0)  # the step runs up to its first await
            if step.done():
                step.result()
                return "step never waits, so there is nothing to time out"
            step.cancel()  # what a StepTimeout / EpisodeTimeout does when the limit passes
            try:
                await step
            except asyncio.CancelledError:
                return "a step cut by a timeout is cancelled cleanly"
            raise _Failed("a cancelled step returned normally: step swallows asyncio.CancelledError, so timeouts cannot stop it")
        finally:
            await asyncio.wait_for(env.close(), 5)

    async def isolation(self) -> str:
        first, second = self.tasks[0], self.tasks[1 % len(self.tasks)]
        env = self.factory()
        try:
            alone = await self.play(env, first, seed=7)
        finally:
            await env.close()
        env_a, env_b = self.factory(), self.factory()
        try:
            together = await asyncio.gather(self.play(env_a, first, seed=7), self.play(env_b, second, seed=8))
        finally:
            await env_a.close()
            await env_b.close()
        _expect(together[0] == alone, "an episode played beside another differs from the same episode played alone: instances share state (class attributes, module globals)")
        return ""

    async def template_conformance(self, tokenizer: Any, chat_template: str | None) -> str:
        from agentrl.policies.base import Generation
        from agentrl.rollout.conversation import ChatRenderer, TokenConversation

        renderer = ChatRenderer(tokenizer, chat_template=chat_template)
        env = self.factory()
        try:
            opening, _ = await env.reset(self.tasks[0], seed=0)
            conversation = TokenConversation(renderer, opening, tools=env.tools)
            for step in range(self.max_steps):
                action = self.action(step)
                ids = renderer.encode(action.text) + [tokenizer.eos_token_id]
                conversation.add_generation(Generation(ids, [0.0] * len(ids), "stop"))
                obs, _, terminated, truncated, _ = await env.step(action)
                if terminated or truncated:
                    break
                conversation.add_observation(obs, conversation.bridge_ids(obs))
                if conversation.prefix_mismatches:
                    return "the template is not append-only here: the runner starts a new segment (bridge mode 'auto')"
                full = renderer.encode(renderer.render(conversation.messages, tools=env.tools, add_generation_prompt=True))
                stitched = conversation.context_ids
                if stitched != full:
                    at = next((i for i, (a, b) in enumerate(zip(stitched, full)) if a != b), min(len(stitched), len(full)))
                    raise _Failed(f"turn {step}: stitched ids differ from a full render at token {at}: {renderer.decode(stitched[at:at + 8])!r} vs {renderer.decode(full[at:at + 8])!r}")
        finally:
            await env.close()
        return "stitched token ids equal a full render"


def _check_messages(messages: Any, where: str) -> None:
    _expect(isinstance(messages, list), f"{where} returned observation of type {type(messages).__name__}, expected a list of messages")
    for m in messages:
        _expect(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str),
            f"{where} returned message {m!r:.80}; messages are {{'role': str, 'content': str}}",
        )


def _check_info(info: Any, where: str) -> None:
    _expect(isinstance(info, dict), f"{where} returned info of type {type(info).__name__}, expected a dict")
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise _Failed(f"{where} info is not JSON-serialisable ({e}): keep info to plain data") from None
