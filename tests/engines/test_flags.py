"""Server options as dicts and flags (slime's ``--sglang-*`` / ``--router-*`` convention), and the
specs that refuse options they set themselves."""

from __future__ import annotations

import sys

import pytest

from agentrl.engines import EngineSpec, FleetConfig, RouterSpec
from agentrl.engines.flags import split_prefixed, to_flags
from agentrl.errors import ConfigError


def test_a_dict_becomes_flags_in_order():
    options = {"mem_fraction_static": 0.8, "enable_memory_saver": True, "disable_radix_cache": False, "chunked_prefill_size": None,
               "cuda_graph_bs": [1, 2, 4], "json_model_override_args": {"rope_scaling": {"factor": 2}}, "tp-size": 2}
    assert to_flags(options) == ["--mem-fraction-static", "0.8", "--enable-memory-saver", "--cuda-graph-bs", "1", "2", "4",
                                 "--json-model-override-args", '{"rope_scaling": {"factor": 2}}', "--tp-size", "2"]


@pytest.mark.parametrize("name", ["--port", "", "mem fraction", 3])
def test_a_name_that_is_no_option_is_refused(name):
    with pytest.raises(ConfigError, match=r"EngineSpec.server_args: .* is not an option name"):
        to_flags({name: 1}, field="EngineSpec.server_args")


def test_prefixed_options_are_read_back_and_the_rest_is_left():
    argv = ["positional", "--sglang-mem-fraction-static", "0.8", "--lr", "1e-6", "--sglang-enable-memory-saver", "--router-policy", "manual",
            "--sglang-cuda-graph-bs", "1", "2", "--sglang-dtype=bfloat16", "--sglang-offset", "-1"]
    sglang, rest = split_prefixed(argv, "sglang")
    assert sglang == {"mem_fraction_static": "0.8", "enable_memory_saver": True, "cuda_graph_bs": ["1", "2"], "dtype": "bfloat16",
                      "offset": "-1"}
    assert rest == ["positional", "--lr", "1e-6", "--router-policy", "manual"]
    router, _ = split_prefixed(rest, "router")
    assert router == {"policy": "manual"}
    assert to_flags(sglang)[:2] == ["--mem-fraction-static", "0.8"]
    with pytest.raises(ConfigError, match="expected --sglang-NAME"):
        split_prefixed(["--sglang-"], "sglang")


def test_engine_commands_for_both_backends():
    sglang = EngineSpec("/models/qwen", backend="sglang", server_args={"tp_size": 2}, launcher=("numactl", "--cpunodebind=0"))
    assert sglang.command(31000) == ["numactl", "--cpunodebind=0", sys.executable, "-m", "sglang.launch_server", "--model-path",
                                     "/models/qwen", "--host", "127.0.0.1", "--port", "31000", "--tp-size", "2"]
    assert EngineSpec("smollm2-135m").command(5)[1:5] == ["-m", "agentrl.cli", "serve", "--model-path"]
    router = RouterSpec({"policy": "manual"}, port=7).command(7)
    assert router[1:9] == ["-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port", "7", "--policy", "manual"]
    assert router[9] == "--prometheus-port" and 0 < int(router[10]) < 65536  # a free one: the default 29000 collides
    assert RouterSpec({"prometheus_port": 9100}).command(7).count("--prometheus-port") == 1


@pytest.mark.parametrize(("make", "message"), [
    (lambda: EngineSpec("m", server_args={"port": 1}), "EngineSpec.server_args: port set by the launcher"),
    (lambda: EngineSpec("m", server_args={"model-path": "x"}), "EngineSpec.server_args: model-path set by the launcher"),
    (lambda: EngineSpec("m", backend="vllm"), "EngineSpec.backend must be one of sglang, agentrl, got 'vllm'"),
    (lambda: EngineSpec("m", port=70000), "EngineSpec.port must lie in"),
    (lambda: EngineSpec(""), "EngineSpec.model_path must name a model"),
    (lambda: RouterSpec({"worker_urls": ["http://h:1"]}), "RouterSpec.router_args: worker_urls set by the launcher"),
    (lambda: RouterSpec({"bad name": 1}), "RouterSpec.router_args: 'bad name' is not an option name"),
    (lambda: FleetConfig(interval_s=0), "FleetConfig.interval_s must be > 0, got 0"),
    (lambda: FleetConfig(failures_to_dead=0), "FleetConfig.failures_to_dead must be >= 1"),
])
def test_bad_specs_are_refused_by_field(make, message):
    with pytest.raises(ConfigError) as error:
        make()
    assert message in str(error.value)
