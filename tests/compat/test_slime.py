"""What slime plug-ins import: ``Sample`` (slime's fields and methods), ``post``/``get`` over real
HTTP, ``GenerateState``, the ``args`` namespace, and the ``slime.*`` import stand-ins."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest
from aiohttp import web

from agentrl.compat.slime import GenerateState, get, post
from agentrl.compat.slime_args import SLIME_DEFAULTS, slime_namespace
from agentrl.compat.slime_types import Sample
from tests.http import serve

META = {"finish_reason": {"type": "length", "length": 2}, "weight_version": "3", "prompt_tokens": 5, "cached_tokens": 2}


def test_sample_has_slimes_fields_and_defaults():
    sample = Sample()
    assert sample.status is Sample.Status.PENDING and sample.reward is None and sample.loss_mask is None
    assert sample.rollout_id is None and sample.weight_versions == [] and sample.train_metadata is None and sample.remove_sample is False
    assert sample.spec_info.spec_accept_rate == 0.0 and sample.prefix_cache_info.prefix_cache_hit_rate == 0.0


def test_append_response_tokens_keeps_tokens_mask_and_log_probs_aligned():
    sample = Sample(tokens=[1, 2, 3])
    sample.append_response_tokens(None, tokens=[7, 8], log_probs=[-0.5, -0.25], meta_info=META, text="ab")
    sample.append_response_tokens(None, tokens=[9], trainable=False, text="<obs>")
    assert sample.tokens == [1, 2, 3, 7, 8, 9] and sample.response_length == 3 and sample.response == "ab<obs>"
    assert sample.loss_mask == [1, 1, 0] and sample.rollout_log_probs == [-0.5, -0.25, 0.0]
    assert sample.status is Sample.Status.TRUNCATED and sample.weight_versions == ["3"]  # from meta_info, as slime
    assert sample.prefix_cache_info.to_dict() == {"cached_tokens": 2, "total_prompt_tokens": 5}
    assert sample.effective_response_length == 2


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [(dict(), dict(tokens=[1, 2], log_probs=[-1.0]), "log_probs length 1 != tokens length 2"),
     (dict(), dict(tokens=[1]), "trainable response tokens require rollout log probabilities"),
     (dict(), dict(tokens=[1], log_probs=[-1.0], trainable=False), "non-trainable response tokens should not pass rollout log probabilities"),
     (dict(tokens=[1, 5], response_length=1), dict(tokens=[2], log_probs=[-1.0]), "existing response tokens but no rollout_log_probs"),
     (dict(), dict(tokens=[1], log_probs=[-1.0], meta_info={"routed_experts": "AAAA"}), "does not replay SGLang's top-p tokens or routed experts")],
)
def test_append_response_tokens_refuses_what_slime_refuses(setup, call, message):
    with pytest.raises(ValueError, match=message):
        Sample(**setup).append_response_tokens(None, **call)


def test_status_takes_slimes_strings():
    sample = Sample(status="completed")
    assert sample.status is Sample.Status.COMPLETED and sample.status == "completed"
    sample.status = "ABORTED"
    assert sample.status is Sample.Status.ABORTED
    with pytest.raises(ValueError, match="sample.status 'done' is not one of pending, completed, truncated, aborted, failed"):
        sample.status = "done"


def test_reward_value_dict_round_trip_and_undeclared_attributes():
    sample = Sample(reward={"score": 1.0, "acc": True}, status=Sample.Status.COMPLETED)
    assert sample.get_reward_value(slime_namespace({"reward_key": "score"})) == 1.0
    assert sample.get_reward_value(slime_namespace({})) == {"score": 1.0, "acc": True}
    sample.tool_calls = 2  # slime's Sample takes undeclared attributes; dumps keep them
    record = sample.to_dict()
    assert record["status"] == "completed" and record["tool_calls"] == 2 and record["spec_info"]["spec_verify_ct"] == 0
    back = Sample.from_dict(record)
    assert back.status is Sample.Status.COMPLETED and back.tool_calls == 2 and back.reward == sample.reward


async def test_post_retries_transient_failures_and_fails_at_once_on_a_4xx():
    calls = {"flaky": 0, "bad": 0}

    async def flaky(request):
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            return web.Response(status=503)
        return web.json_response({"echo": await request.json()})

    async def bad(request):
        calls["bad"] += 1
        return web.Response(status=400, text="no such field")

    async def text(request):
        return web.Response(text="plain")

    async with serve("/flaky", flaky) as url:
        assert await post(url, {"a": 1}) == {"echo": {"a": 1}}
        assert calls["flaky"] == 3
        calls["flaky"] = 0
        with pytest.raises(aiohttp.ClientResponseError) as failure:
            await post(url, {"a": 1}, max_retries=2)
        assert failure.value.status == 503 and calls["flaky"] == 2
    async with serve("/bad", bad) as url:
        with pytest.raises(aiohttp.ClientResponseError, match="no such field"):
            await post(url, {}, max_retries=5)
        assert calls["bad"] == 1
    async with serve("/text", text) as url:
        assert await post(url, None) == "plain"


async def test_get_returns_json():
    async def workers(request):
        return web.json_response({"workers": [{"url": "http://a:1"}]})

    app = web.Application()
    app.router.add_get("/workers", workers)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        assert await get(f"http://127.0.0.1:{runner.addresses[0][1]}/workers") == {"workers": [{"url": "http://a:1"}]}
    finally:
        await runner.cleanup()


def test_args_carry_slimes_names_and_defaults():
    args = slime_namespace({"rollout_batch_size": 4, "n_samples_per_prompt": 2, "sglang_args": {"mem_fraction_static": "0.7"},
                            "slime_args": {"balance_data": True}, "rollout_stop": [], "disable_grpo_std_normalization": True,
                            "rollout_num_engines": 0, "eps_clip": 0.2})
    for name in ("ci_test", "use_rollout_routing_replay", "context_parallel_size", "sglang_server_concurrency", "rollout_num_gpus",
                 "rollout_num_gpus_per_engine", "group_rm", "sglang_dp_size", "rollout_global_dataset"):
        assert hasattr(args, name), name
    assert args.ci_test is False and args.context_parallel_size == 1 and args.sglang_server_concurrency == 512 and args.rollout_seed == 42
    assert args.sglang_mem_fraction_static == "0.7" and args.balance_data is True and args.rollout_stop is None
    assert args.grpo_std_normalization is False and args.rollout_num_engines == 1  # the embedded engine is one
    assert args.eps_clip_high == 0.2 and args.over_sampling_batch_size == 4 and args.eval_reward_key is None  # derived as slime does
    assert SLIME_DEFAULTS["rollout_function_path"] == "slime.rollout.sglang_rollout.generate_rollout"


def test_args_read_a_custom_config_file(tmp_path):
    path = tmp_path / "custom.yaml"
    path.write_text("max_turns: 3\nsearch_url: http://localhost:8000\n")
    args = slime_namespace({"custom_config_path": str(path)})
    assert args.max_turns == 3 and args.search_url == "http://localhost:8000"


def test_generate_state_is_one_per_event_loop(tiny_llama_dir):
    args = slime_namespace({"hf_checkpoint": str(tiny_llama_dir), "n_samples_per_prompt": 2, "rollout_max_response_len": 16})

    async def states():
        first, second = GenerateState(args), GenerateState(slime_namespace({}))
        async with first.semaphore:
            with first.dp_rank_context() as rank:
                assert rank == 0 and first.dp_counts == [1]
        return first, second

    a, b = asyncio.run(states())
    c, _ = asyncio.run(states())
    assert a is b and a is not c  # the first args win within a loop; a new loop (a new run) gets a new state
    assert a.sampling_params["max_new_tokens"] == 16 and a.sampling_params["no_stop_trim"] is True and a.tokenizer is not None


def test_slime_imports_resolve_to_agentrl_where_slime_is_absent():
    code = (
        "import agentrl.compat\n"
        "from slime.utils.types import Sample\n"
        "from slime.utils.http_utils import post\n"
        "from slime.rollout.sglang_rollout import GenerateState, generate\n"
        "from slime.rollout.rm_hub.math_dapo_utils import compute_score\n"
        "import agentrl.compat.slime as ours\n"
        "assert Sample is ours.Sample and post is ours.post and GenerateState is ours.GenerateState\n"
        "assert compute_score('Answer: 3', '3')['score'] == 1.0\n"
        "try:\n    import slime.backends\nexcept ImportError:\n    print('only the listed modules')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "only the listed modules"
    off = subprocess.run([sys.executable, "-c", "import agentrl.compat\nimport slime"], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "AGENTRL_SLIME_SHIM": "0"})
    assert off.returncode != 0 and "No module named 'slime'" in off.stderr
