"""The embedded engine on the real SmolLM2-135M-Instruct (fp32 unless a test says otherwise)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

from agentrl.errors import PolicyError
from agentrl.policies.base import Generation, SamplingParams
from agentrl.policies.batch import StopRule
from agentrl.policies.embedded import EmbeddedEngine
from tests.loop_probe import loop_probe

ATOL = 1e-4  # fp32 log-probs
EOS = 2  # <|im_end|>, SmolLM2's eos
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea and the wind at night.",
    "Is 7 a prime number?",
    "Say hi.",
]


@pytest.fixture(scope="module")
def model(smollm2_dir) -> PreTrainedModel:
    """Loaded once; engines share it (laying out its weights is idempotent), tests that change
    its weights put them back."""
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


@pytest.fixture
async def engine(model, tokenizer):
    async with EmbeddedEngine(model, tokenizer, seed=0) as engine:
        yield engine


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    """Chat prompts of different lengths."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)["input_ids"]
        for q in QUESTIONS
    ]


def hf_greedy(model: PreTrainedModel, prompt: list[int], n: int) -> list[int]:
    """Greedy continuation by HF's full forward: argmax of the last logits, ``n`` times."""
    tokens = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
            if tokens[-1] == EOS:
                break
    return tokens[len(prompt) :]


def hf_logprobs(model: PreTrainedModel, prompt: list[int], out: list[int], temperature: float) -> torch.Tensor:
    """``log_softmax(logits / T)`` of each generated token under HF's forward."""
    with torch.inference_mode():
        logits = model(torch.tensor([prompt + out])).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits / temperature, dim=-1).gather(1, torch.tensor(out)[:, None])[:, 0]


async def test_greedy_equals_hf_greedy(engine, model, prompts):
    got = await engine.generate(prompts[0], SamplingParams(max_new_tokens=12, temperature=0.0))
    assert got.token_ids == hf_greedy(model, prompts[0], 12)
    want = hf_logprobs(model, prompts[0], got.token_ids, temperature=1.0)  # greedy: T = 1
    torch.testing.assert_close(torch.tensor(got.logprobs), want, atol=ATOL, rtol=0)


async def test_sampled_logprobs_are_temperature_scaled_before_truncation(engine, model, prompts):
    sampling = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=20, top_p=0.9, seed=3)
    got = await engine.generate(prompts[2], sampling)
    assert len(got.token_ids) == len(got.logprobs) > 0
    want = hf_logprobs(model, prompts[2], got.token_ids, temperature=0.7)
    torch.testing.assert_close(torch.tensor(got.logprobs), want, atol=ATOL, rtol=0)


async def test_concurrent_requests_of_different_lengths_equal_their_solo_runs(engine, prompts):
    greedy = SamplingParams(max_new_tokens=10, temperature=0.0)
    solo = [await engine.generate(p, greedy) for p in prompts[:4]]

    async def late(prompt: list[int], delay: float) -> Generation:
        await asyncio.sleep(delay)  # joins a batch that is already decoding
        return await engine.generate(prompt, greedy)

    staggered = await asyncio.gather(*(late(p, 0.05 * i) for i, p in enumerate(prompts[:4])))
    together = await asyncio.gather(*(engine.generate(p, greedy) for p in prompts[:4]))  # shares the template prefix
    for batched in (staggered, together):
        assert [g.token_ids for g in batched] == [g.token_ids for g in solo]
        for a, b in zip(batched, solo):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=ATOL, rtol=0)


async def test_same_seed_same_tokens_whatever_is_batched_beside_it(engine, prompts):
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, seed=1234)
    alone = await engine.generate(prompts[1], sampling)
    others = [SamplingParams(max_new_tokens=n, temperature=1.0, seed=n) for n in (3, 9, 15)]
    crowded, *_ = await asyncio.gather(
        engine.generate(prompts[1], sampling),
        *(engine.generate(p, s) for p, s in zip((prompts[0], prompts[2], prompts[3]), others)),
    )
    assert crowded.token_ids == alone.token_ids
    other_seed = await engine.generate(prompts[1], SamplingParams(max_new_tokens=12, seed=99))
    assert other_seed.token_ids != alone.token_ids


async def test_stop_string_ends_the_turn_and_keeps_its_tokens(engine, tokenizer, prompts):
    free = await engine.generate(prompts[2], SamplingParams(max_new_tokens=16, temperature=0.0))
    text = tokenizer.decode(free.token_ids)
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    got = await engine.generate(prompts[2], SamplingParams(max_new_tokens=16, temperature=0.0, stop=(stop,)))
    assert (got.finish_reason, got.matched_stop) == ("stop", stop)
    assert got.token_ids == free.token_ids[: len(got.token_ids)]
    assert stop in tokenizer.decode(got.token_ids)
    assert stop not in tokenizer.decode(got.token_ids[:-1])


async def test_stop_token_id_ends_the_turn_and_is_kept(engine, prompts):
    free = await engine.generate(prompts[0], SamplingParams(max_new_tokens=6, temperature=0.0))
    stop_id = free.token_ids[3]
    got = await engine.generate(prompts[0], SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=(stop_id,)))
    assert got.token_ids == free.token_ids[: free.token_ids.index(stop_id) + 1]
    assert (got.finish_reason, got.matched_stop) == ("stop", stop_id)


async def test_eos_ends_the_turn_unless_ignored(engine, prompts):
    greedy = SamplingParams(max_new_tokens=40, temperature=0.0)
    got = await engine.generate(prompts[4], greedy)  # "Say hi." gets a short answer
    assert (got.finish_reason, got.matched_stop, got.token_ids[-1]) == ("stop", EOS, EOS)
    n = len(got.token_ids)
    past = await engine.generate(prompts[4], SamplingParams(max_new_tokens=n + 2, temperature=0.0, ignore_eos=True))
    assert (past.finish_reason, past.matched_stop) == ("length", None)
    assert past.token_ids[:n] == got.token_ids and len(past.token_ids) == n + 2


async def test_max_new_tokens_ends_with_length(engine, prompts):
    got = await engine.generate(prompts[2], SamplingParams(max_new_tokens=5, temperature=1.0, seed=0))
    assert (got.finish_reason, len(got.token_ids), got.weight_version) == ("length", 5, 0)
    assert got.meta["prompt_tokens"] == len(prompts[2])
    none = await engine.generate(prompts[2], SamplingParams(max_new_tokens=0))
    assert (none.token_ids, none.finish_reason) == ([], "length")


async def test_context_length_rejects_long_prompts_and_clamps_the_budget(tokenizer):
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=24,
    )
    async with EmbeddedEngine(AutoModelForCausalLM.from_config(config), tokenizer) as small:
        assert small.context_length == 24
        with pytest.raises(PolicyError, match="the prompt has 25 tokens but the model's context is 24"):
            await small.generate([5] * 25, SamplingParams())
        got = await small.generate([5] * 20, SamplingParams(max_new_tokens=100, ignore_eos=True))
        assert (got.finish_reason, len(got.token_ids)) == ("length", 4)


@pytest.mark.parametrize(
    ("input_ids", "message"),
    [([], "input_ids is empty"), ([1, 49152], r"token ids must lie in \[0, 49152\), got 1..49152")],
)
async def test_malformed_prompts_are_rejected(engine, input_ids, message):
    with pytest.raises(PolicyError, match=message):
        await engine.generate(input_ids, SamplingParams())


async def test_update_weights_changes_outputs_and_version(engine, model, prompts):
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
    before = await engine.generate(prompts[0], greedy)
    name = "model.layers.3.mlp.down_proj.weight"
    original = model.get_parameter(name).detach().clone()
    try:
        await engine.update_weights([(name, torch.zeros_like(original))], weight_version=7)
        after = await engine.generate(prompts[0], greedy)
        assert (engine.weight_version, after.weight_version) == (7, 7)
        assert after.logprobs != before.logprobs
    finally:
        await engine.update_weights([(name, original)], weight_version=8)
    restored = await engine.generate(prompts[0], greedy)
    assert (restored.token_ids, restored.weight_version) == (before.token_ids, 8)


async def test_update_waits_for_running_requests(engine, model, prompts):
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0)
    reference = await engine.generate(prompts[1], greedy)
    name = "model.norm.weight"
    original = model.get_parameter(name).detach().clone()
    running = asyncio.create_task(engine.generate(prompts[1], greedy))
    await _until(lambda: engine.num_running == 1)
    try:
        await engine.update_weights([(name, original * 0.5)], weight_version=1)
        old = await running
        assert (old.token_ids, old.weight_version) == (reference.token_ids, 0)
    finally:
        await engine.update_weights([(name, original)], weight_version=2)


async def test_update_weights_rejects_unknown_names(engine):
    with pytest.raises(PolicyError, match="unknown parameter 'lm_head.bias'"):
        await engine.update_weights([("lm_head.bias", torch.zeros(3))], weight_version=1)
    assert engine.weight_version == 0


async def test_cancelled_caller_frees_its_row(engine, prompts):
    long = SamplingParams(max_new_tokens=500, ignore_eos=True, seed=0)
    task = asyncio.create_task(engine.generate(prompts[0], long))
    await _until(lambda: engine.num_running == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _until(lambda: engine.num_running == 0)
    assert (await engine.generate(prompts[0], SamplingParams(max_new_tokens=2))).finish_reason == "length"


async def test_abort_returns_the_partial_turn(engine, prompts):
    task = asyncio.create_task(engine.generate(prompts[0], SamplingParams(max_new_tokens=500, ignore_eos=True), rid="r1"))
    await _until(lambda: engine.num_running == 1)
    with pytest.raises(PolicyError, match="'r1' is already in flight"):
        await engine.generate(prompts[1], SamplingParams(), rid="r1")
    assert await engine.abort("r1") is True
    got = await task
    assert got.finish_reason == "abort" and 0 < len(got.token_ids) < 500
    assert await engine.abort("r1") is False
    assert await engine.abort("never-sent") is False


async def test_a_failing_step_fails_its_requests_and_the_engine_recovers(engine, prompts, monkeypatch):
    """Fault injection: the model's decode step raises once."""
    decoder = engine._decoder
    real_decode = decoder.decode

    def broken(*args: object) -> torch.Tensor:
        monkeypatch.setattr(decoder, "decode", real_decode)
        raise RuntimeError("injected")

    monkeypatch.setattr(decoder, "decode", broken)
    results = await asyncio.gather(
        *(engine.generate(p, SamplingParams(max_new_tokens=4)) for p in prompts[:3]), return_exceptions=True
    )
    assert all(isinstance(r, PolicyError) and "injected" in str(r) for r in results)
    assert engine.num_running == 0
    assert len((await engine.generate(prompts[0], SamplingParams(max_new_tokens=3))).token_ids) == 3


async def test_a_request_whose_stop_check_fails_fails_alone(engine, prompts, monkeypatch):
    """Fault injection: one request's stop-string check raises in the step it shares with two
    others; only that request fails."""
    real_check = StopRule.check

    def check(self: StopRule, token_ids, tokenizer):
        if "boom" in self.stop_strings:
            raise RuntimeError("injected stop check failure")
        return real_check(self, token_ids, tokenizer)

    monkeypatch.setattr(StopRule, "check", check)
    plain = SamplingParams(max_new_tokens=5, temperature=0.0, ignore_eos=True)
    results = await asyncio.gather(
        engine.generate(prompts[0], plain), engine.generate(prompts[1], SamplingParams(max_new_tokens=5, stop=("boom",))),
        engine.generate(prompts[2], plain), return_exceptions=True,
    )
    assert isinstance(results[1], PolicyError) and "injected stop check failure" in str(results[1])
    assert [(r.finish_reason, len(r.token_ids)) for r in (results[0], results[2])] == [("length", 5)] * 2


async def test_a_request_whose_prefill_fails_fails_alone(engine, prompts, monkeypatch):
    """Fault injection: the prefill of a new request raises while another request decodes; the
    running one finishes with the tokens it has alone."""
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, ignore_eos=True)
    reference = await engine.generate(prompts[0], greedy)
    running = asyncio.create_task(engine.generate(prompts[0], greedy))
    await _until(lambda: engine.num_running == 1)

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("injected prefill failure")

    with monkeypatch.context() as patch:
        patch.setattr(engine._decoder, "prefill", broken)
        with pytest.raises(PolicyError, match="injected prefill failure"):
            await engine.generate(prompts[1], SamplingParams(max_new_tokens=4))
    got = await running
    assert got.token_ids == reference.token_ids
    torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(reference.logprobs), atol=ATOL, rtol=0)


async def test_close_waits_for_a_running_step_without_blocking_the_event_loop(model, tokenizer, prompts, monkeypatch):
    """The engine's loop is cancelled mid-step (as ``asyncio.run`` does to tasks left at exit):
    ``aclose`` waits for the worker to finish that step while the event loop keeps running."""
    engine = EmbeddedEngine(model, tokenizer)
    entered = threading.Event()
    real_decode = engine._decoder.decode

    def slow_decode(*args: object) -> torch.Tensor:
        entered.set()
        time.sleep(1.5)
        return real_decode(*args)

    monkeypatch.setattr(engine._decoder, "decode", slow_decode)
    request = asyncio.create_task(engine.generate(prompts[0], SamplingParams(max_new_tokens=50, ignore_eos=True)))
    while not entered.is_set():
        await asyncio.sleep(0.01)
    engine._loop_task.cancel()
    with pytest.raises(PolicyError, match="loop was cancelled"):
        await request
    async with loop_probe(0.005) as probe:
        started = time.monotonic()
        await engine.aclose()
        waited = time.monotonic() - started
    assert waited > 0.5, "aclose returned before the worker finished its step"
    assert probe.worst < 0.4, f"the event loop stalled for {probe.worst:.2f}s during aclose"


async def test_event_loop_stays_responsive_while_decoding(engine, prompts):
    async with loop_probe(0.005) as probe:
        await asyncio.gather(*(engine.generate(p, SamplingParams(max_new_tokens=16, seed=0)) for p in prompts))
    assert probe.ticks > 10 and probe.worst < 0.5


async def test_close_aborts_in_flight_requests_and_is_final(model, tokenizer, prompts):
    engine = EmbeddedEngine(model, tokenizer)
    task = asyncio.create_task(engine.generate(prompts[0], SamplingParams(max_new_tokens=500, ignore_eos=True)))
    await _until(lambda: engine.num_running == 1)
    await engine.aclose()
    assert (await task).finish_reason == "abort"
    await engine.aclose()  # safe twice
    with pytest.raises(RuntimeError, match="EmbeddedEngine is closed"):
        await engine.generate(prompts[0], SamplingParams())


async def test_bfloat16_engine_log_probs_stay_within_bf16_noise_of_fp32(smollm2_dir, smollm2_fp32, prompts):
    """Against the fp32 model, not HF's own bf16 forward: on CPUs without native bf16 (e.g. AMD
    EPYC) HF's bf16 kernels drift 0.3 from fp32 on some tokens, more than the engine does."""
    async with EmbeddedEngine.from_pretrained(str(smollm2_dir), dtype="bfloat16") as engine:
        got = await engine.generate(prompts[0], SamplingParams(max_new_tokens=6, temperature=0.0))
        assert engine.model.dtype == torch.bfloat16
    gap = (torch.tensor(got.logprobs) - hf_logprobs(smollm2_fp32, prompts[0], got.token_ids, temperature=1.0)).abs()
    assert gap.mean() < 0.1 and gap.max() < 0.3, gap


async def _until(condition, limit_s: float = 30.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
