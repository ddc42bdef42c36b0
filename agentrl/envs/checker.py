"""``check_env``: a contract checker for env authors.

It resets and steps the env with fixed tasks, seeds and actions and checks what every part of
agentrl relies on. Each failure names the likely cause. Run it in your env's tests::

    report = await check_env(lambda: MyEnv(), tasks=[...], tokenizer=tok)   # raises on failure

The probes reach the env's game and tool logic: an env that declares ``tools`` first gets a
well-formed call of each tool (Hermes format, the runner's default parser), then ordinary
actions. The seeding check plays the same seed twice with the process-wide generators
(``random``'s and numpy's) set to different states, and fails an env that touches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentrl.envs.core import Action, Env, Message, Task, ToolCall, is_message
from agentrl.envs.tool_calls import parse_hermes
from agentrl.errors import ChatTemplateError, EnvError, EnvStateError

PROBE_ACTIONS: tuple[Action, ...] = (
    Action("Let me think step by step. The answer is \\boxed{0}."),
    Action("<search>capital of France</search>"),
    Action("<answer>Paris</answer>"),
)
"""Ordinary actions the checker plays (override with ``actions=``)."""

TOOL_PROBE_RESULT = "agentrl check_env: probe tool result"
"""The content of the ``tool`` message the template check renders after a probe tool call."""

_PROBE_VALUES: dict[str, Any] = {"string": "test", "integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}

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

CHECK_TIMEOUT_S = 300.0
"""Bound on one check, its episodes included: an env call that hangs fails that check."""


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
    actions: Sequence[Action] | None = None,
    tokenizer: Any = None,
    chat_template: str | None = None,
    max_steps: int = 16,
    raise_on_failure: bool = True,
) -> CheckReport:
    """Check that envs made by ``env_factory`` keep the :class:`~agentrl.envs.Env` contract.

    Args:
        env_factory: makes a fresh env (e.g. ``lambda: agentrl.envs.make(id)``).
        tasks: tasks to reset with; default: the env's ``example_tasks()``.
        actions: what the policy "says" on successive steps (the last one repeats); default:
            :func:`tool_probe_actions` for the env's ``tools``, then :data:`PROBE_ACTIONS`.
        tokenizer: a Hugging Face tokenizer; enables the chat-template conformance check.
        chat_template: a Jinja template overriding the tokenizer's.
        max_steps: an episode that has not ended after this many steps fails the check.
        raise_on_failure: raise :class:`EnvCheckError` (with the report) when a check fails.
    """
    try:
        probe = env_factory()
    except Exception as e:  # nothing else can be checked: the report says why
        report = CheckReport(env=getattr(env_factory, "__name__", repr(env_factory)))
        report.results.append(CheckResult("construction", False, f"env_factory() raised {type(e).__name__}: {e}"))
        if raise_on_failure:
            raise EnvCheckError(str(report)) from e
        return report
    tasks = list(tasks) if tasks else probe.example_tasks()
    actions = list(actions) if actions is not None else [*tool_probe_actions(probe.tools), *PROBE_ACTIONS]
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
        return CheckResult(name, True, await asyncio.wait_for(check(), CHECK_TIMEOUT_S))
    except TimeoutError:
        return CheckResult(name, False, f"did not finish within {CHECK_TIMEOUT_S:g} s: an env call hangs")
    except _Failed as e:
        return CheckResult(name, False, str(e))
    except Exception as e:
        return CheckResult(name, False, f"raised {type(e).__name__}: {e}")


def tool_probe_actions(tools: list[dict[str, Any]] | None) -> list[Action]:
    """One well-formed Hermes call (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``) of
    each tool in ``tools`` (chat-template JSON schemas), every parameter set to a plain value of
    its type (an enum's first value); ``[]`` when there are no tools."""
    actions = []
    for tool in tools or []:
        function = tool.get("function", tool)
        properties = (function.get("parameters") or {}).get("properties") or {}
        arguments = {name: _probe_value(schema) for name, schema in properties.items()}
        text = f"<tool_call>{json.dumps({'name': function.get('name'), 'arguments': arguments})}</tool_call>"
        actions.append(Action(text, parse_hermes(text)))
    return actions


def _probe_value(schema: dict[str, Any]) -> Any:
    if schema.get("enum"):
        return schema["enum"][0]
    types = schema.get("type", "string")
    types = [types] if isinstance(types, str) else [t for t in types if t != "null"] or ["string"]
    return _PROBE_VALUES.get(types[0], "test")


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
        return list(checks)

    def action(self, step: int) -> Action:
        return self.actions[min(step, len(self.actions) - 1)]

    async def play_fresh(self, task: Task, seed: int | None) -> _Played:
        """Play one episode on a new env, closed after it."""
        env = self.factory()
        try:
            return await self.play(env, task, seed)
        finally:
            await env.close()

    async def play(self, env: Env, task: Task, seed: int | None) -> _Played:
        opening, _ = await env.reset(task, seed=seed)
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
        played = await self.play_fresh(self.tasks[0], seed=0)
        _, _, terminated, truncated = played.steps[-1]
        _expect(terminated or truncated, f"the episode did not end in {self.max_steps} steps: give the env a turn limit: "
                "agentrl check-env ID --max-turns N, make(id, max_turns=N), or register it (or point its entry point at an "
                "EnvSpec) with max_turns=N")
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
        for perturbation in (1, 2):  # the global generators start elsewhere each time
            with _global_generators_seeded(perturbation) as touched:
                outcomes.append(await self.play_fresh(self.tasks[0], seed=123))
            _expect(not touched, "; ".join(touched))
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
        alone = await self.play_fresh(first, seed=7)
        env_a, env_b = self.factory(), self.factory()
        try:
            together = await asyncio.gather(self.play(env_a, first, seed=7), self.play(env_b, second, seed=8))
        finally:
            await env_a.close()
            await env_b.close()
        _expect(together[0] == alone, "an episode played beside another differs from the same episode played alone: instances share state (class attributes, module globals)")
        return ""

    async def template_conformance(self, tokenizer: Any, chat_template: str | None) -> str:
        from agentrl.rollout.conversation import ChatRenderer

        renderer = ChatRenderer(tokenizer, chat_template=chat_template)
        env = self.factory()
        try:
            opening, _ = await env.reset(self.tasks[0], seed=0)
            if env.tools:
                _check_tool_turn(renderer, opening, env.tools)
            return await self.stitch(env, renderer, opening)
        finally:
            await env.close()

    async def stitch(self, env: Env, renderer: Any, opening: list[Message]) -> str:
        """Play ``env`` (just reset to ``opening``) as the runner does; each turn, the stitched ids
        must equal a full render, and that render must hold every observation."""
        from agentrl.policies.base import Generation
        from agentrl.rollout.conversation import TokenConversation

        conversation = TokenConversation(renderer, opening, tools=env.tools)
        for step in range(self.max_steps):
            action = self.action(step)
            ids = renderer.encode(action.text) + [renderer.tokenizer.eos_token_id]
            conversation.add_generation(Generation(ids, [0.0] * len(ids), "stop"))
            obs, _, terminated, truncated, _ = await env.step(action)
            if terminated or truncated:
                break
            conversation.add_observation(obs, conversation.bridge_ids(obs))
            if conversation.prefix_mismatches:
                return "the template is not append-only here: the runner starts a new segment (bridge mode 'auto')"
            text = renderer.render(conversation.messages, tools=env.tools, add_generation_prompt=True)
            _check_rendered(obs, text, f"turn {step}")
            _check_stitched(renderer, conversation.context_ids, renderer.encode(text), step)
        return "stitched token ids equal a full render"


@contextlib.contextmanager
def _global_generators_seeded(seed: int) -> Iterator[list[str]]:
    """Seed the process-wide generators (``random``'s, numpy's) with ``seed`` for the block and
    restore their states after it; the yielded list gets a failure message for each one the block
    drew from or reseeded."""
    import numpy as np

    saved = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    start = random.getstate(), _numpy_key(np)
    touched: list[str] = []
    try:
        yield touched
    finally:
        if random.getstate() != start[0]:
            touched.append("the env draws from the global random module; use self.rng seeded by reset(seed=...) "
                           "(the module's state changed: a draw, or random.seed, which reseeds the whole process)")
        if _numpy_key(np) != start[1]:
            touched.append("the env draws from numpy's global random generator; use self.rng seeded by reset(seed=...) "
                           "(for numpy: numpy.random.default_rng(self.rng.getrandbits(64)))")
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _numpy_key(np: Any) -> tuple[bytes, int, int, float]:
    state = np.random.get_state(legacy=False)
    return state["state"]["key"].tobytes(), state["state"]["pos"], state["has_gauss"], state["gauss"]


def _check_tool_turn(renderer: Any, opening: list[Message], tools: list[dict[str, Any]]) -> None:
    """Render a probe call of the env's first tool and a ``tool`` answer after ``opening``: the
    chat template must render both."""
    call = {"role": "assistant", "content": tool_probe_actions(tools)[0].text}
    answer = {"role": "tool", "content": TOOL_PROBE_RESULT}
    try:
        text = renderer.render([*opening, call, answer], tools=tools, add_generation_prompt=True)
    except Exception as e:
        reason = e.__cause__ if isinstance(e, ChatTemplateError) and e.__cause__ else e  # the template's own words
        raise _Failed(f"the chat template cannot render a tool call and its 'tool' answer: {type(reason).__name__}: {reason}; "
                      "use a template that renders tool messages (chat_template=...)") from None
    _check_rendered([call, answer], text, "a tool call and its answer")


def _check_rendered(messages: list[Message], text: str, where: str) -> None:
    for m in messages:
        _expect(m["content"].strip() in text, f"{where}: the chat template dropped a {m['role']!r} message (its content is not in "
                f"the rendering), so the model would never see it; use a template that renders {m['role']!r} messages")


def _check_stitched(renderer: Any, stitched: list[int], full: list[int], step: int) -> None:
    if stitched != full:
        at = next((i for i, (a, b) in enumerate(zip(stitched, full)) if a != b), min(len(stitched), len(full)))
        raise _Failed(f"turn {step}: stitched ids differ from a full render at token {at}: "
                      f"{renderer.decode(stitched[at:at + 8])!r} vs {renderer.decode(full[at:at + 8])!r}")


def _check_messages(messages: Any, where: str) -> None:
    _expect(isinstance(messages, list), f"{where} returned observation of type {type(messages).__name__}, expected a list of messages")
    for m in messages:
        _expect(is_message(m), f"{where} returned message {m!r:.80}; messages are {{'role': str, 'content': str}}")


def _check_info(info: Any, where: str) -> None:
    _expect(isinstance(info, dict), f"{where} returned info of type {type(info).__name__}, expected a dict")
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise _Failed(f"{where} info is not JSON-serialisable ({e}): keep info to plain data") from None
