"""The Search-R1 env (`contrib/SearchR1-v0`) against a real HTTP retriever speaking Search-R1's
API: env.step unit tests, failures of the retriever, and a real episode's token masks with
SmolLM2's tokenizer."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from agentrl.envs import Action, MaxTurns, Task, make
from agentrl.errors import EnvError
from agentrl.policies import ScriptedPolicy
from agentrl.rollout import ChatRenderer, RolloutConfig, RolloutRunner, Termination
from tests.http import serve

CORPUS = {"france": '"France"\nParis is the capital of France.', "peru": '"Peru"\nThe currency of Peru is the sol.'}


@pytest.fixture
async def retriever():
    """A Search-R1-shaped retriever; ``state["mode"]`` makes it misbehave."""
    state = {"mode": "ok", "calls": 0}

    async def retrieve(request: web.Request) -> web.Response:
        state["calls"] += 1
        body = await request.json()
        if state["mode"] == "slow":
            await asyncio.sleep(2)
        if state["mode"] == "error":
            return web.Response(status=503, text="overloaded")
        if state["mode"] == "garbage":
            return web.json_response({"hits": "?"})
        docs = [[{"id": k, "contents": v} for k, v in CORPUS.items() if k in q.lower()][: body["topk"]] for q in body["queries"]]
        return web.json_response({"result": docs})

    async with serve("/retrieve", retrieve) as url:
        state["url"] = url
        yield state


def env_for(retriever, **kwargs):
    return make("contrib/SearchR1-v0", retriever_url=retriever["url"], timeout_s=0.5, retries=1, **kwargs)


async def play(env, *replies: str, label=("Paris",)):
    await env.reset(Task("What is the capital of France", list(label), index=0))
    results = []
    try:
        for reply in replies:
            results.append(await env.step(Action(reply)))
    finally:
        await env.close()
    return results


async def test_search_then_answer(retriever):
    search, answer = await play(env_for(retriever), "<think>I need facts.</think><search> capital of France </search>", "<answer> Paris </answer>")
    assert not search.terminated and search.reward == 0.0
    assert "<information>Doc 1(Title: France) Paris is the capital of France.</information>" in search.observation[0]["content"]
    assert answer.terminated and answer.reward == 1.0
    assert answer.info | {} == {"searches": 1, "answered": True, "correct": True, "invalid_turns": 0, "retrieval_retries": 0,
                                "retrieved_answer": True}


async def test_several_searches_an_empty_result_and_a_wrong_answer_with_format_score(retriever):
    env = env_for(retriever, format_score=0.1)
    first, second, answer = await play(env, "<search>peru money</search>", "<search>nothing here</search>", "<answer>Lima</answer>")
    assert "The currency of Peru is the sol." in first.observation[0]["content"]
    assert "<information>No results.</information>" in second.observation[0]["content"]
    assert answer.reward == 0.1 and answer.info["searches"] == 2 and answer.info["correct"] is False


@pytest.mark.parametrize(("replies", "reward"), [
    (["<answer>Lima</answer>"], 0.0),  # blind: no format score without a search
    (["<search>peru</search>", "<answer>Lima</answer>"], 0.1),  # searched, the answer was not retrieved
    (["<search>france</search>", "<answer>Lima</answer>"], 0.2 + 0.1),  # retrieved "Paris", then a wrong answer
    (["<search>france</search>", "<search>france</search>", "<answer>Paris</answer>"], 0.2 + 1.0),  # retrieval pays once
    (["<answer>Paris</answer>"], 1.0),
])
async def test_search_r1_shaping(retriever, replies, reward):
    env = env_for(retriever, format_score=0.1, format_requires_search=True, retrieval_score=0.2)
    results = await play(env, *replies)
    assert results[-1].terminated and sum(r.reward for r in results) == pytest.approx(reward)
    assert results[-1].info["retrieved_answer"] is ("<search>france</search>" in replies)


async def test_a_custom_instruction_is_the_first_message_and_a_broken_one_is_refused(retriever):
    env = env_for(retriever, instruction="Q: {question} Use <{search}>.")
    messages, _ = await env.reset(Task("Where is Paris", ["France"], index=0))
    assert messages == [{"role": "user", "content": "Q: Where is Paris? Use <search>."}]
    await env.close()
    with pytest.raises(ValueError, match="instruction: not a template"):
        env_for(retriever, instruction="Q: {query}")


@pytest.mark.parametrize("reply", ["<search>unclosed query", "no tags at all", "<search>  </search>", "<answer>unclosed"])
async def test_malformed_turns_get_a_corrective_observation(retriever, reply):
    (result,) = await play(env_for(retriever), reply)
    assert not result.terminated and "previous action is invalid" in result.observation[0]["content"]
    assert result.info["invalid_turns"] == 1 and retriever["calls"] == 0


async def test_an_answer_without_search_and_normalised_exact_match(retriever):
    (result,) = await play(env_for(retriever), "<answer>the  PARIS.</answer>")
    assert result.terminated and result.reward == 1.0 and result.info["searches"] == 0


async def test_search_disabled_is_the_no_search_control(retriever):
    (result,) = await play(env_for(retriever, search_enabled=False), "<search>capital of France</search>")
    assert "Search is disabled" in result.observation[0]["content"] and retriever["calls"] == 0


@pytest.mark.parametrize("mode", ["slow", "error", "garbage"])
async def test_a_failing_retriever_is_an_env_error(retriever, mode):
    retriever["mode"] = mode
    with pytest.raises(EnvError, match="retriever"):
        await play(env_for(retriever), "<search>capital of France</search>")
    assert retriever["calls"] == (1 if mode == "garbage" else 2)  # transient failures are retried once


async def test_a_retriever_that_is_down_is_an_env_error():
    env = make("contrib/SearchR1-v0", retriever_url="http://127.0.0.1:9/retrieve", timeout_s=0.5, retries=1)
    with pytest.raises(EnvError, match="failed 2 times"):
        await play(env, "<search>anything</search>")


async def test_a_real_episode_masks_the_information_tokens(retriever, tokenizer):
    replies = ["<search>capital of France</search>", "<answer>Paris</answer>"]
    runner = RolloutRunner(ScriptedPolicy(tokenizer, replies), ChatRenderer(tokenizer),
                           lambda: env_for(retriever), RolloutConfig(max_new_tokens=64))
    (trajectory,) = await runner.run([Task("What is the capital of France", ["Paris"], index=0)], progress=False)
    assert trajectory.termination is Termination.DONE and trajectory.reward == 1.0
    assert len(trajectory.segments) == 1  # SmolLM2's template is append-only: one sequence, bridged
    segment = trajectory.segments[0]
    trained = tokenizer.decode([t for t, m in zip(segment.response_ids, segment.loss_mask) if m])
    masked = tokenizer.decode([t for t, m in zip(segment.response_ids, segment.loss_mask) if not m])
    assert "<search>capital of France</search>" in trained and "<answer>Paris</answer>" in trained
    assert "Paris is the capital of France" in masked and "Paris is the capital of France" not in trained


async def test_max_turns_truncates(retriever, tokenizer):
    runner = RolloutRunner(ScriptedPolicy(tokenizer, ["<search>capital of France</search>"]), ChatRenderer(tokenizer),
                           lambda: MaxTurns(env_for(retriever), 3), RolloutConfig(max_new_tokens=32))
    (trajectory,) = await runner.run([Task("What is the capital of France", ["Paris"], index=0)], progress=False)
    assert trajectory.termination is Termination.MAX_TURNS and trajectory.info["searches"] == 3


@pytest.mark.parametrize(("answer", "reward"), [
    ("Paris", 1.0),
    ("Paris is the capital of France", pytest.approx(2 * (1 / 5) / (1 / 5 + 1))),  # F1: "paris" of 5 words ("the" dropped)
    ("Lima", 0.0),
])
async def test_f1_answer_metric_gives_partial_credit_to_a_wrong_answer(retriever, answer, reward):
    (result,) = await play(env_for(retriever, answer_metric="f1", format_score=0.05), f"<answer>{answer}</answer>")
    assert result.terminated and result.reward == (0.05 if reward == 0.0 else reward)
    assert result.info["correct"] is (reward == 1.0)


async def test_a_custom_invalid_message_replaces_search_r1s_and_bad_settings_are_refused(retriever):
    env = env_for(retriever, invalid_message="Invalid: use the {search} or {answer} tags.")
    (result,) = await play(env, "no tags")
    assert result.observation[0]["content"] == "Invalid: use the search or answer tags."
    with pytest.raises(ValueError, match="invalid_message: not a template"):
        env_for(retriever, invalid_message="{query}")
    with pytest.raises(ValueError, match="answer_metric: expected 'em' or 'f1'"):
        env_for(retriever, answer_metric="rouge")


async def test_max_searches_asks_for_the_answer_after_the_last_search_and_runs_no_more(retriever):
    env = env_for(retriever, max_searches=2)
    first, last, refused, answer = await play(env, "<search>peru</search>", "<search>france</search>", "<search>france</search>", "<answer>Paris</answer>")
    assert "no searches left" not in first.observation[0]["content"]
    assert last.observation[0]["content"].endswith("</information>\nYou have no searches left. Write the answer now: <answer> your answer </answer>\n")
    assert refused.observation[0]["content"] == "You have no searches left. Write the answer now: <answer> your answer </answer>\n"
    assert retriever["calls"] == 2 and refused.info["searches"] == 2 and refused.info["invalid_turns"] == 1
    assert answer.terminated and answer.reward == 1.0
    with pytest.raises(ValueError, match="max_searches: expected a positive number"):
        env_for(retriever, max_searches=0)


async def test_the_last_search_message_can_restate_the_question(retriever):
    env = env_for(retriever, max_searches=1, last_search_message="No searches left. Answer: {question} <{answer}>")
    last, refused = await play(env, "<search>france</search>", "<search>peru</search>")
    assert last.observation[0]["content"].endswith("</information>\nNo searches left. Answer: What is the capital of France? <answer>")
    assert refused.observation[0]["content"] == "No searches left. Answer: What is the capital of France? <answer>"
    with pytest.raises(ValueError, match="last_search_message: not a template"):
        env_for(retriever, last_search_message="{query}")


async def test_answer_prefill_starts_the_last_turn_with_a_masked_answer_tag(retriever, tokenizer):
    replies = ["<search>capital of France</search>", " Paris</answer>"]
    renderer = ChatRenderer(tokenizer)
    runner = RolloutRunner(ScriptedPolicy(tokenizer, replies), renderer,
                           lambda: env_for(retriever, max_searches=1, answer_prefill=True), RolloutConfig(max_new_tokens=64))
    (trajectory,) = await runner.run([Task("What is the capital of France", ["Paris"], index=0)], progress=False)
    assert trajectory.termination is Termination.DONE and trajectory.reward == 1.0
    assert trajectory.messages[-1] == {"role": "assistant", "content": "<answer> Paris</answer>"}
    (segment,) = trajectory.segments
    trained = tokenizer.decode([t for t, m in zip(segment.response_ids, segment.loss_mask) if m])
    masked = tokenizer.decode([t for t, m in zip(segment.response_ids, segment.loss_mask) if not m])
    assert "<answer>" not in trained and " Paris</answer>" in trained
    assert masked.endswith("<|im_start|>assistant\n<answer>")
    # the one sequence is exactly the template's rendering of the whole conversation
    assert renderer.render(trajectory.messages, add_generation_prompt=False).startswith(tokenizer.decode(segment.token_ids))
    with pytest.raises(ValueError, match="answer_prefill: needs max_searches"):
        env_for(retriever, answer_prefill=True)
