"""The OpenAI-compatible endpoint through real HTTP and the real ``openai`` SDK and OpenAI Agents SDK:
recorded sessions equal the env path token for token, edited histories start counted segments,
bad requests get 400s in OpenAI's shape."""

from __future__ import annotations

import dataclasses

import aiohttp
import openai
import pytest

from agentrl.policies import ScriptedPolicy
from agentrl.policies.embedded import EmbeddedEngine
from agentrl.rollout import ChatRenderer
from agentrl.serving.openai_api import OpenAIAPI, OpenAIServer, policy_generate
from agentrl.serving.openai_session import SessionConfig
from tests.serving.openai_agent import SCRIPT, SYSTEM, TASK, agents_sdk_program, env_path, openai_program, toolset


@pytest.fixture
async def served(tokenizer):
    api = OpenAIAPI(policy_generate(ScriptedPolicy(tokenizer, SCRIPT)), ChatRenderer(tokenizer), model_name="scripted")
    async with OpenAIServer(api) as server:
        yield api, server


def client(server, session=None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url(session), api_key="unused", max_retries=0)


def assert_sampled_verbatim(record, tokenizer, script=SCRIPT):
    """Every turn's sampled ids are the policy's ids (the reply's encoding and eos), mask 1, and
    nothing else has mask 1."""
    [segment] = record["segments"]
    sampled = [t for t, m in zip(segment["response_ids"], segment["loss_mask"]) if m]
    expected = [t for reply in script for t in tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]]
    assert sampled == expected
    assert [lp for lp, m in zip(segment["rollout_logprobs"], segment["loss_mask"]) if m] == [-0.5] * len(expected)
    assert all(lp == 0.0 for lp, m in zip(segment["rollout_logprobs"], segment["loss_mask"]) if not m)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_openai_sdk_agent_is_recorded_as_the_env_path_records_it(served, tokenizer, stream):
    api, server = served
    session = api.open_session("episode-1")
    async with client(server, session) as c:
        assert await openai_program(c, TASK, stream=stream) == 1.0
    record = session.record()
    assert_sampled_verbatim(record, tokenizer)
    expected = await env_path(tokenizer)
    assert record["segments"] == [dataclasses.asdict(s) for s in expected.segments]
    assert (record["turns"], record["prefix_mismatches"], record["history_edits"], record["ended"]) == (3, 0, 0, None)


async def test_agents_sdk_agent_is_recorded_as_the_env_path_records_it(served, tokenizer):
    api, server = served
    session = api.open_session()
    async with client(server, session) as c:
        assert await agents_sdk_program(c, TASK) == 1.0
    record = session.record()
    assert_sampled_verbatim(record, tokenizer)
    assert record["segments"] == [dataclasses.asdict(s) for s in (await env_path(tokenizer)).segments]


async def test_edited_history_starts_a_counted_segment_and_the_session_goes_on(served, tokenizer):
    api, server = served
    session = api.open_session()
    tools = toolset().schemas
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK.prompt}]
    async with client(server, session) as c:
        first = (await c.chat.completions.create(model="m", messages=messages, tools=tools)).choices[0].message
        call = first.tool_calls[0]
        edited = [*messages, {"role": "assistant", "content": None, "tool_calls": [{**call.model_dump(), "function": {"name": "add", "arguments": '{"a": 2, "b": 4}'}}]},
                  {"role": "tool", "tool_call_id": call.id, "content": "6"}]
        await c.chat.completions.create(model="m", messages=edited, tools=tools)  # rewrote the model's call
        await c.chat.completions.create(model="m", messages=messages[1:], tools=tools)  # dropped the system prompt
    record = session.record()
    assert (record["history_edits"], record["prefix_mismatches"], len(record["segments"]), record["turns"]) == (2, 2, 3, 3)
    assert record["ended"] is None
    for segment, reply in zip(record["segments"], SCRIPT):  # each segment: a canonical prompt, then the turn sampled on it
        assert segment["response_ids"] == tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]
        assert set(segment["loss_mask"]) == {1}
    rendered = tokenizer.apply_chat_template(messages[1:], tools=tools, add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(record["segments"][2]["prompt_ids"]) == rendered


REFUSES_USER_AFTER_USER = ("{%- for m in messages %}{%- if not loop.first and m['role'] == 'user' and loop.previtem['role'] == 'user' %}"
                           "{{ raise_exception('roles must alternate') }}{%- endif %}{%- endfor %}")


async def test_messages_the_chat_template_refuses_get_a_400_and_leave_the_session_as_it_was(tokenizer):
    renderer = ChatRenderer(tokenizer, chat_template=REFUSES_USER_AFTER_USER + tokenizer.chat_template)
    api = OpenAIAPI(policy_generate(ScriptedPolicy(tokenizer, SCRIPT)), renderer)
    tools = toolset().schemas
    async with OpenAIServer(api) as server:
        session = api.open_session()
        async with client(server, session) as c:
            messages = [{"role": "user", "content": TASK.prompt}]
            call = (await c.chat.completions.create(model="m", messages=messages, tools=tools)).choices[0].message.tool_calls[0]
            messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]}, {"role": "tool", "tool_call_id": call.id, "content": "5"}]
            pair = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
            for refused_messages in ([*messages, *pair], pair):  # appended to the session, and a rewritten history
                with pytest.raises(openai.BadRequestError) as refused:
                    await c.chat.completions.create(model="m", messages=refused_messages, tools=tools)
                assert refused.value.code == "chat_template_refused" and refused.value.param == "messages"
                roles = ", ".join(m["role"] for m in refused_messages)
                assert f"refused a conversation with roles [{roles}]: roles must alternate" in refused.value.message
            await c.chat.completions.create(model="m", messages=messages, tools=tools)
    record = session.record()
    assert (record["turns"], len(record["segments"]), record["prefix_mismatches"], record["history_edits"]) == (2, 1, 0, 0)
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "tool", "assistant"]


async def test_sessions_over_http_models_and_unrecorded_requests(served):
    api, server = served
    async with aiohttp.ClientSession(server.url) as http:
        async with http.post("/sessions", json={"id": "s1"}) as r:
            assert (r.status, await r.json()) == (201, {"id": "s1", "base_url": "/sessions/s1/v1"})
        async with http.get("/sessions/s1/v1/models") as r:
            assert (await r.json())["data"][0]["id"] == "scripted"
        async with http.post("/sessions/s1/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}) as r:
            body = await r.json()
            assert body["choices"][0]["finish_reason"] == "tool_calls" and body["usage"]["completion_tokens"] > 0
        async with http.delete("/sessions/s1") as r:
            assert (await r.json())["turns"] == 1
        async with http.post("/sessions/s1/v1/chat/completions", json={"model": "x", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 404 and (await r.json())["error"]["type"] == "not_found_error"
    async with client(server) as c:  # /v1 itself: answered, not recorded
        response = await c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], tool_choice="none", n=3, logprobs=True)
    assert len(response.choices) == 3 and api.sessions == {}
    choice = response.choices[0]
    assert choice.message.tool_calls is None and choice.message.content == SCRIPT[0]  # tool_choice none: the text as it is
    assert [t.logprob for t in choice.logprobs.content] == [-0.5] * (response.usage.completion_tokens // 3)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, None, "'model' is required"),
        ({"model": "m", "messages": []}, "messages", "at least one message"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages", "'role' must be one of"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages", "text-only"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature", "in [0, 2]"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n", "an integer in [1, 64]"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", ">= 1"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice", "cannot force a tool call"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 5}, None, "not supported by this server"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [""]}, "stop", "non-empty string"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools", "'tools[0]' must be"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "functions": []}, None, "unknown field(s) functions"),
    ],
)
async def test_bad_requests_get_400_in_openais_shape(served, body, param, says):
    _, server = served
    async with aiohttp.ClientSession(server.url) as http, http.post("/v1/chat/completions", json=body) as r:
        error = (await r.json())["error"]
    assert r.status == 400 and error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]


async def test_session_limits_end_it_with_their_code(tokenizer):
    api = OpenAIAPI(policy_generate(ScriptedPolicy(tokenizer, SCRIPT)), ChatRenderer(tokenizer), config=SessionConfig(max_turns=1))
    async with OpenAIServer(api) as server:
        session = api.open_session()
        async with client(server, session) as c:
            messages = [{"role": "user", "content": "hi"}]
            await c.chat.completions.create(model="m", messages=messages)
            with pytest.raises(openai.BadRequestError) as refused:
                await c.chat.completions.create(model="m", messages=messages)
    assert refused.value.code == "max_turns_exceeded" and session.record()["ended"] == "max_turns"


async def test_embedded_engine_tokens_are_recorded_verbatim(tiny_llama_dir):
    engine = EmbeddedEngine.from_pretrained(str(tiny_llama_dir), dtype="float32", seed=0)
    async with engine:
        api = OpenAIAPI(policy_generate(engine), ChatRenderer(engine.tokenizer), config=SessionConfig(max_context_len=engine.context_length))
        async with OpenAIServer(api) as server:
            session = api.open_session()
            async with client(server, session) as c:
                response = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=12, logprobs=True, seed=3)
    [segment] = session.record()["segments"]
    assert len(segment["response_ids"]) == response.usage.completion_tokens and set(segment["loss_mask"]) == {1}
    assert segment["rollout_logprobs"] == [t.logprob for t in response.choices[0].logprobs.content]
    assert response.choices[0].finish_reason in ("length", "stop")


async def test_agentrl_serve_exposes_the_openai_api_beside_sglangs(tiny_dir):
    from tests.serving.conftest import agentrl_serve

    with agentrl_serve("--model-path", str(tiny_dir), "--port", "0", "--dtype", "float32", "--enable-openai-api", "--tool-call-parser", "llama3",
                       "--served-model-name", "tiny") as (_, url):
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as c:
            assert [m.id for m in (await c.models.list()).data] == ["tiny"]
            response = await c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        async with aiohttp.ClientSession(url) as http, http.post("/generate", json={"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 2}}) as r:
            assert r.status == 200
    assert response.usage.completion_tokens <= 4 and response.choices[0].finish_reason in ("length", "stop")


async def test_a_turn_cut_by_its_budget_is_answered_then_ends_the_session(tokenizer):
    api = OpenAIAPI(policy_generate(ScriptedPolicy(tokenizer, SCRIPT)), ChatRenderer(tokenizer), config=SessionConfig(max_new_tokens=3, end_on_length=True))
    async with OpenAIServer(api) as server:
        session = api.open_session()
        async with client(server, session) as c:
            cut = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.BadRequestError) as refused:
                await c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    assert refused.value.code == "length" and session.ended.value == "length"
