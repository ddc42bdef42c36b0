"""check_env passes the built-in envs and fails deliberately broken ones with a clear message."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest

from agentrl.envs import Action, EnvCheckError, MaxTurns, OrderEnforcing, StepResult, Task, ToolCall, check_env, make
from tests.rollout.tag_env import FACTS, TagSearchEnv
from tests.rollout.test_conversation import STRIP_THINK_TEMPLATE


def tag_env():
    return OrderEnforcing(MaxTurns(TagSearchEnv(), 4))


async def test_builtin_math_env_passes_with_template_conformance(tokenizer):
    report = await check_env(lambda: make("agentrl/Math-v0"), tokenizer=tokenizer)
    assert report.ok and len(report.results) == 11
    assert "PASSED" in str(report)


async def test_multi_turn_tag_env_passes_and_its_stitched_ids_equal_a_full_render(tokenizer):
    report = await check_env(tag_env, tokenizer=tokenizer)
    assert report.ok
    assert report.results[-1].detail == "stitched token ids equal a full render"


async def test_a_template_that_is_not_append_only_is_reported_not_failed(tokenizer):
    actions = [Action("<think>hm</think><search>capital of France</search>"), Action("<answer>Paris</answer>")]
    report = await check_env(tag_env, tokenizer=tokenizer, chat_template=STRIP_THINK_TEMPLATE, actions=actions)
    assert report.ok and "not append-only" in report.results[-1].detail


LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look a fact up.", "parameters": {
    "type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["query"]}}}


class ToolSearchEnv(TagSearchEnv):
    """TagSearchEnv with a function tool: hermes ``lookup`` calls get ``tool`` messages."""

    tools = [LOOKUP]

    async def step(self, action):
        if not action.tool_calls:
            return await super().step(action)
        self.actions.append(action.text)
        return StepResult([{"role": "tool", "content": self.call(c)} for c in action.tool_calls], 0.0, False, False, {})

    def call(self, call: ToolCall) -> str:
        if call.error or call.name != "lookup":
            return f"error: {call.error or f'unknown tool {call.name}'}"
        return FACTS.get(str(call.arguments["query"]).lower(), "No results.")


def tool_env(env_class=ToolSearchEnv):
    return lambda: OrderEnforcing(MaxTurns(env_class(), 6))


async def test_a_tool_env_passes_and_the_probes_call_its_tools(tokenizer):
    played = []

    def factory():
        played.append(ToolSearchEnv())
        return OrderEnforcing(MaxTurns(played[-1], 6))

    report = await check_env(factory, tokenizer=tokenizer)
    assert report.ok, str(report)
    call = '<tool_call>{"name": "lookup", "arguments": {"query": "test", "limit": 1}}</tool_call>'
    assert any(call in env.actions for env in played)


class GlobalRandomInToolEnv(ToolSearchEnv):
    def call(self, call):
        return random.choice(["No results.", "Nothing found.", "Try again."])  # reached only through a tool call


class NumpyGlobalRandomInToolEnv(ToolSearchEnv):
    def call(self, call):
        return f"{np.random.randint(1000)} results"


class ReseedsGlobalRandomEnv(TagSearchEnv):
    async def reset(self, task, *, seed=None):
        messages, info = await super().reset(task, seed=seed)
        random.seed(seed)  # deterministic per seed, but it reseeds the whole process
        return [{"role": "user", "content": f"{messages[0]['content']} (puzzle {random.randint(0, 99)})"}], info


class SharedStateEnv(TagSearchEnv):
    history: list[str] = []  # shared by every instance: the bug

    async def step(self, action):
        self.history.append(action.text)
        result = await super().step(action)
        return result._replace(reward=float(len(self.history)))


class UnseededEnv(TagSearchEnv):
    async def step(self, action):
        import random

        result = await super().step(action)
        return result._replace(reward=random.random())


class NonJsonInfoEnv(TagSearchEnv):
    async def step(self, action):
        result = await super().step(action)
        return result._replace(info={"when": object()})


class CrashesOnBadToolCallEnv(TagSearchEnv):
    async def step(self, action):
        for call in action.tool_calls:
            if call.error:
                raise ValueError(call.error)
        return await super().step(action)


class BlockingEnv(TagSearchEnv):
    async def step(self, action):
        time.sleep(0.4)  # noqa: ASYNC251 - the blocking env the checker must catch
        return await super().step(action)


class SwallowsCancellationEnv(TagSearchEnv):
    async def step(self, action):
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass
        return await super().step(action)


class WrongTypesEnv(TagSearchEnv):
    async def step(self, action):
        return StepResult("text", "1", 0, False, {})


class NeverEndsEnv(TagSearchEnv):
    async def step(self, action):
        return StepResult([{"role": "user", "content": "go on"}], 0.0, False, False, {})


GLOBAL_RANDOM = "draws from the global random module; use self.rng seeded by reset(seed=...)"


@pytest.mark.parametrize(
    ("env_factory", "check", "fragment"),
    [
        (lambda: OrderEnforcing(MaxTurns(SharedStateEnv(), 4)), "parallel instances share no state", "instances share state"),
        (lambda: OrderEnforcing(MaxTurns(UnseededEnv(), 4)), "same seed gives the same episode", GLOBAL_RANDOM),
        (tool_env(GlobalRandomInToolEnv), "same seed gives the same episode", GLOBAL_RANDOM),
        (tool_env(NumpyGlobalRandomInToolEnv), "same seed gives the same episode",
         "draws from numpy's global random generator; use self.rng seeded by reset(seed=...)"),
        (lambda: OrderEnforcing(MaxTurns(ReseedsGlobalRandomEnv(), 4)), "same seed gives the same episode", GLOBAL_RANDOM),
        (lambda: OrderEnforcing(MaxTurns(NonJsonInfoEnv(), 4)), "step returns StepResult with JSON-serialisable info", "info is not JSON-serialisable"),
        (lambda: OrderEnforcing(MaxTurns(CrashesOnBadToolCallEnv(), 4)), "malformed and unknown tool calls become observations", "raised ValueError: tool call is not valid JSON"),
        (lambda: OrderEnforcing(MaxTurns(BlockingEnv(), 2)), "env calls do not block the event loop", "the event loop stalled"),
        (lambda: OrderEnforcing(MaxTurns(SwallowsCancellationEnv(), 4)), "step timeouts trip", "swallows asyncio.CancelledError"),
        (lambda: OrderEnforcing(MaxTurns(WrongTypesEnv(), 4)), "step returns StepResult with JSON-serialisable info", "returned observation of type str"),
        (lambda: OrderEnforcing(NeverEndsEnv()), "episode ends within max_steps",
         "did not end in 16 steps: give the env a turn limit: agentrl check-env ID --max-turns N, make(id, max_turns=N)"),
        (lambda: MaxTurns(TagSearchEnv(), 4), "step after the end raises EnvStateError", "returned normally"),
    ],
)
async def test_broken_envs_fail_the_check_that_names_the_cause(env_factory, check, fragment):
    with pytest.raises(EnvCheckError) as excinfo:
        await check_env(env_factory)
    report = str(excinfo.value)
    failed = [line for line in report.splitlines() if line.strip().startswith("FAIL")]
    assert any(check in line and fragment in line for line in failed), report


async def test_an_env_without_tasks_is_told_how_to_provide_them():
    class NoTasks(TagSearchEnv):
        def example_tasks(self):
            return []

    report = await check_env(NoTasks, raise_on_failure=False)
    assert not report.ok and "pass tasks=... or implement Env.example_tasks()" in str(report)


async def test_explicit_tasks_are_used():
    report = await check_env(tag_env, tasks=[Task("Capital of Peru?", "Lima")])
    assert report.ok


def test_the_checker_leaves_the_global_random_generators_as_it_found_them():
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    asyncio.run(check_env(tool_env(), raise_on_failure=False))
    assert (random.random(), np.random.random()) == expected


SMOL_CHAT = """{%- for m in messages %}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""
DROPS_TOOL_MESSAGES = SMOL_CHAT.replace("{{- '<|im_start|>'", "{%- if m.role != 'tool' %}{{- '<|im_start|>'").replace(
    "<|im_end|>\\n' }}{%- endfor %}", "<|im_end|>\\n' }}{%- endif %}{%- endfor %}")
REFUSES_TOOL_MESSAGES = "{%- for m in messages %}{%- if m.role == 'tool' %}{{ raise_exception('roles must be user or assistant') }}{%- endif %}{%- endfor %}" + SMOL_CHAT


@pytest.mark.parametrize(("template", "fragment"), [
    (DROPS_TOOL_MESSAGES, "the chat template dropped a 'tool' message (its content is not in the rendering)"),
    (REFUSES_TOOL_MESSAGES, "the chat template cannot render a tool call and its 'tool' answer: TemplateError: roles must be user or assistant"),
], ids=["drops", "refuses"])
async def test_a_template_that_mishandles_tool_messages_fails_the_template_check(tokenizer, template, fragment):
    report = await check_env(tool_env(), tokenizer=tokenizer, chat_template=template, raise_on_failure=False)
    (failed,) = [r for r in report.results if not r.passed]
    assert failed.name == "chat template conformance" and fragment in failed.detail, str(report)


async def test_the_template_that_renders_tool_messages_passes(tokenizer):
    report = await check_env(tool_env(), tokenizer=tokenizer, chat_template=SMOL_CHAT)
    assert report.ok


async def test_a_factory_that_raises_is_a_failed_construction_check_not_a_traceback():
    def factory():
        raise ValueError("topk must be positive")

    report = await check_env(factory, raise_on_failure=False)
    assert not report.ok and [(r.name, r.detail) for r in report.results] == [("construction", "env_factory() raised ValueError: topk must be positive")]
    with pytest.raises(EnvCheckError, match="construction"):
        await check_env(factory)


async def test_a_hanging_env_fails_each_check_within_its_bound(monkeypatch):
    import agentrl.envs.checker

    class Hangs(TagSearchEnv):
        async def step(self, action):
            await asyncio.sleep(3600)

    monkeypatch.setattr(agentrl.envs.checker, "CHECK_TIMEOUT_S", 0.5)
    report = await asyncio.wait_for(check_env(Hangs, tasks=[Task("Capital of France?", "Paris")], raise_on_failure=False), 60)
    assert not report.ok and any(r.detail == "did not finish within 0.5 s: an env call hangs" for r in report.results)
