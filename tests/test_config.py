"""Training config: YAML and flags with slime's names, the batch identity, one-line errors."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest
import torch

from agentrl import precision
from agentrl.config import load_config, load_rollout_config
from agentrl.envs import EnvRegistry, registration
from agentrl.errors import ConfigError


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"input": "1+1?", "label": "2"}\n')
    return path


@pytest.fixture
def generic_env(monkeypatch):
    """``test/Generic-v0`` (takes any keyword argument) beside the math env, in a scoped default registry."""
    reg = EnvRegistry()
    reg.register("agentrl/Math-v0", "agentrl.envs.math_env:MathEnv")
    reg.register("test/Generic-v0", "tests.envs.testing_env:GenericTestEnv")
    monkeypatch.setattr(registration, "registry", reg)
    return reg


def test_yaml_then_flags_override(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\nrollout_batch_size: 4\nn-samples-per-prompt: 8\nlr: 1e-6\nenv-kwargs: {{format_reward: 0.1}}\n")
    cfg = load_config(["--config", str(config), "--lr", "2e-6", "--use-kl-loss", "--kl-loss-coef", "0.01"])
    assert (cfg.rollout_batch_size, cfg.n_samples_per_prompt, cfg.lr, cfg.use_kl_loss) == (4, 8, 2e-6, True)
    assert cfg.env_kwargs == {"format_reward": 0.1}
    assert cfg.loss().kl_loss_coef == 0.01 and cfg.trainer().lr == 2e-6 and cfg.rollout().n_samples_per_prompt == 8


def test_stop_flags_and_per_eval_dataset_env_kwargs(tmp_path, data, generic_env):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"prompt-data: {data}\nenv: test/Generic-v0\neval-prompt-data: [a, {data}, b, {data}]\nenv-kwargs: {{k: 1, s: on}}\n"
        "eval-env-kwargs: {k: 2}\neval-dataset-env-kwargs: {b: {s: off}}\nrollout-stop: ['</search>']\n")
    cfg = load_config(["--config", str(config), "--rollout-stop-token-ids", "7", "9"])
    assert cfg.rollout().stop == ("</search>",) and cfg.rollout(eval=True).stop_token_ids == (7, 9)
    assert cfg.env_kwargs_for(None) == {"k": 1, "s": True}
    assert cfg.env_kwargs_for("a") == {"k": 2, "s": True} and cfg.env_kwargs_for("b") == {"k": 2, "s": False}
    config.write_text(f"prompt-data: {data}\nenv: test/Generic-v0\neval-prompt-data: [a, {data}]\neval-dataset-env-kwargs: {{c: {{s: off}}}}\n")
    with pytest.raises(ConfigError, match="eval_dataset_env_kwargs: 'c' is not an --eval-prompt-data name"):
        load_config(["--config", str(config)])


@pytest.mark.parametrize(
    ("flags", "gbs", "steps"),
    [([], 32, 1), (["--global-batch-size", "16"], 16, 2), (["--num-steps-per-rollout", "4"], 8, 4),
     (["--num-steps-per-rollout", "2", "--global-batch-size", "16"], 16, 2)],
)
def test_batch_identity_derives_the_missing_side(data, flags, gbs, steps):
    cfg = load_config(["--prompt-data", str(data), "--rollout-batch-size", "4", "--n-samples-per-prompt", "8", *flags])
    assert (cfg.global_batch_size, cfg.num_steps_per_rollout) == (gbs, steps)
    assert cfg.rollout_batch_size * cfg.n_samples_per_prompt == cfg.global_batch_size * cfg.num_steps_per_rollout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--global-batch-size", "12"], "are not a multiple of --global-batch-size 12"),
        (["--num-steps-per-rollout", "2", "--global-batch-size", "12"], "--global-batch-size 12 x --num-steps-per-rollout 2 must equal --rollout-batch-size 4 x --n-samples-per-prompt 8 = 32 samples"),
        (["--rollout-batchsize", "3"], "unrecognized arguments: --rollout-batchsize (did you mean --rollout-batch-size?)"),
        (["--kl-loss-type", "k9"], "invalid choice: 'k9'"),
        (["--kl-loss-coef", "0.1"], "--kl-loss-coef is set but --use-kl-loss is not"),
        (["--use-dynamic-batch-size"], "--use-dynamic-batch-size needs --max-tokens-per-gpu"),
        (["--eval-interval", "5"], "--eval-interval needs --eval-prompt-data"),
        (["--custom-generate-function-path", "m.generate", "--max-turns", "2", "--rollout-step-timeout", "5"],
         "--max-turns and --rollout-step-timeout limit an env's turns and steps, which a --custom-generate-function-path does not play"),
    ],
)
def test_bad_configs_are_refused_with_the_flag_named(data, flags, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(["--prompt-data", str(data), "--rollout-batch-size", "4", "--n-samples-per-prompt", "8", *flags])
    assert message in str(excinfo.value)


def test_yaml_errors_name_file_and_key(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\nrollout_batchsize: 4\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'rollout_batchsize'; did you mean 'rollout-batch-size'\?"):
        load_config(["--config", str(config)])
    config.write_text(f"prompt-data: {data}\nrollout-batch-size: four\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: rollout-batch-size must be int, got 'four'"):
        load_config(["--config", str(config)])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--prompt-data", "missing.jsonl"], "--prompt-data missing.jsonl: no such file"),
        (["--rollout-batchsize", "8"], "did you mean --rollout-batch-size?"),
        (["--global-batch-size", "7"], "are not a multiple of --global-batch-size 7"),
        (["__BAD_DATA__"], "train.jsonl:2: not valid JSON"),
    ],
)
def test_agentrl_train_config_errors_are_one_line(tmp_path, data, args, fragment):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"input": "1+1?", "label": "2"}\n{"input": \n')
    argv = ["--prompt-data", str(bad)] if args == ["__BAD_DATA__"] else (args if args[0] == "--prompt-data" else ["--prompt-data", str(data), *args])
    result = subprocess.run([sys.executable, "-m", "agentrl.cli", "train", *argv, "--output-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], result.stderr[-2000:]


# ---------------------------------------------------------------- every rollout setting, from flags and YAML


def test_every_rollout_setting_reaches_the_runner_config(tmp_path, data, generic_env):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"prompt-data: {data}\nenv: test/Generic-v0\nenv-kwargs: {{k: 1}}\nrollout-step-timeout: 2\nrollout-episode-timeout: 30\n"
        "tool-parser: none\nbridge-mode: segment\nend-on-length: false\nreset-seed: sample\nmax-turns: 3\n")
    cfg = load_config(["--config", str(config), "--rollout-episode-timeout", "45.5", "--max-turns", "4"])
    rollout = cfg.rollout()
    assert (rollout.step_timeout_s, rollout.episode_timeout_s, rollout.tool_parser, rollout.bridge_mode) == (2.0, 45.5, "none", "segment")
    assert (rollout.end_on_length, rollout.reset_seed, rollout.max_turns) == (False, "sample", 4)
    assert cfg.rollout(eval=True).step_timeout_s == 2.0 and cfg.env_kwargs == {"k": 1}
    flags = load_config(["--prompt-data", str(data), "--env", "test/Generic-v0", "--env-kwargs", '{"k": [1, 2]}', "--rollout-step-timeout", "0.5",
                         "--tool-parser", "hermes", "--bridge-mode", "append", "--no-end-on-length", "--reset-seed", "sample"])
    rollout = flags.rollout()
    assert (rollout.step_timeout_s, rollout.episode_timeout_s, rollout.bridge_mode, rollout.end_on_length, rollout.reset_seed) == (0.5, None, "append", False, "sample")
    assert flags.env_kwargs == {"k": [1, 2]} and load_config(["--prompt-data", str(data)]).rollout().reset_seed == "group"


def test_the_rollout_command_reads_the_same_yaml_as_train(tmp_path, data, generic_env):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\nenv: test/Generic-v0\nrollout-step-timeout: 2\nlr: 1e-5\nnum-rollout: 3\nreset-seed: sample\noutput: {tmp_path / 'o.jsonl'}\n")
    cfg = load_rollout_config(["--config", str(config), "--rollout-temperature", "0.5"])
    assert (cfg.rollout().step_timeout_s, cfg.rollout().reset_seed, cfg.rollout().temperature, cfg.output) == (2.0, "sample", 0.5, str(tmp_path / "o.jsonl"))
    assert (cfg.n_samples_per_prompt, cfg.seed, cfg.rollout().seed) == (1, None, None)  # the rollout command's defaults
    greedy = load_rollout_config(["--config", str(config), "--rollout-temperature", "0"])  # fine to play, not to train on
    assert greedy.rollout().temperature == 0.0
    assert load_config(["--config", str(config)]).lr == 1e-5  # train reads the same file, ignoring `output`
    config.write_text(f"prompt-data: {data}\nrollout-step-timeot: 2\n")
    with pytest.raises(ConfigError, match=r"unknown key 'rollout-step-timeot'; did you mean 'rollout-step-timeout'\?"):
        load_rollout_config(["--config", str(config), "--output", str(tmp_path / "o.jsonl")])
    with pytest.raises(ConfigError, match=r"unrecognized arguments: --lr"):
        load_rollout_config(["--prompt-data", str(data), "--output", str(tmp_path / "o.jsonl"), "--lr", "1e-5"])


# ---------------------------------------------------------------- values checked where the config is read


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rollout-top-p", "1.5"], "--rollout-top-p must be in (0, 1], got 1.5"),
        (["--rollout-top-p", "0"], "--rollout-top-p must be in (0, 1], got 0.0"),
        (["--rollout-top-k", "0"], "--rollout-top-k must be >= 1 (or -1), got 0"),
        (["--rollout-temperature", "nan"], "--rollout-temperature must be a finite number, got nan"),
        (["--lr", "inf"], "--lr must be a finite number, got inf"),
        (["--max-turns", "0"], "--max-turns must be >= 1, got 0"),
        (["--lr", "-1"], "--lr must be >= 0, got -1.0"),
        (["--eps-clip", "-0.2"], "--eps-clip must be >= 0, got -0.2"),
        (["--eps-clip-high", "-0.1"], "--eps-clip-high must be >= 0, got -0.1"),
        (["--eps-clip-c", "1"], "--eps-clip-c must be > 1, got 1.0"),
        (["--adam-beta1", "1"], "--adam-beta1 must be in [0, 1), got 1.0"),
        (["--adam-beta2", "-0.5"], "--adam-beta2 must be in [0, 1), got -0.5"),
        (["--rollout-concurrency", "0"], "--rollout-concurrency must be >= 1, got 0"),
        (["--weight-decay", "-0.01"], "--weight-decay must be >= 0, got -0.01"),
        (["--rollout-step-timeout", "0"], "--rollout-step-timeout must be > 0, got 0.0"),
        (["--rollout-episode-timeout", "-5"], "--rollout-episode-timeout must be > 0, got -5.0"),
        (["--global-batch-size", "0"], "--global-batch-size must be >= 1, got 0"),
        (["--rollout-stop-token-ids", "2", "-1"], "--rollout-stop-token-ids must be >= 0, got -1"),
        (["--tis-clip", "0"], "--tis-clip must be > 0, got 0.0"),
        (["--use-tis", "--tis-clip-low", "3"], "--tis-clip-low 3.0 must be <= --tis-clip 2.0"),
        (["--lr", "1e-6", "--min-lr", "1e-5"], "--min-lr 1e-05 must be <= --lr 1e-06"),
        (["--lr-warmup-iters", "-1"], "--lr-warmup-iters must be >= 0, got -1"),
        (["--clip-grad", "-1"], "--clip-grad must be >= 0, got -1.0"),
        (["--eval-temperature", "-0.5"], "--eval-temperature must be >= 0, got -0.5"),
        (["--rollout-temperature", "0"], "--rollout-temperature must be > 0, got 0.0"),  # training needs logits / temperature
        (["--n-samples-per-eval-prompt", "0"], "--n-samples-per-eval-prompt must be >= 1, got 0"),
        (["--save-interval", "0"], "--save-interval must be >= 1, got 0"),
        (["--max-tokens-per-gpu", "0"], "--max-tokens-per-gpu must be >= 1, got 0"),
        (["--rollout-max-context-len", "0"], "--rollout-max-context-len must be >= 1, got 0"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--device", "tpu"], "--device must be cpu or cuda[:N], got 'tpu'"),
        (["--env-kwargs", "[1, 2]"], "argument --env-kwargs: expected a JSON object such as"),
        (["--env-kwargs", "{oops"], "argument --env-kwargs: not valid JSON"),
        (["--env-kwargs", '{"no_such_arg": 1}'], "--env-kwargs {\"no_such_arg\": 1}: env 'agentrl/Math-v0' does not take"),
        (["--env", "agentrl/Maths-v0"], "--env agentrl/Maths-v0: unknown env id 'agentrl/Maths-v0'. Did you mean 'agentrl/Math-v0'?"),
        (["--tool-parser", "nope"], "--tool-parser: unknown tool parser 'nope'"),
        (["--bridge-mode", "nope"], "argument --bridge-mode: invalid choice: 'nope'"),
        (["--reset-seed", "task"], "argument --reset-seed: invalid choice: 'task'"),
    ],
)
def test_values_are_checked_with_the_flag_named_in_one_line(data, flags, message):
    with pytest.raises(ConfigError) as excinfo:
        load_config(["--prompt-data", str(data), *flags])
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_device_cuda_needs_cuda(data):
    if torch.cuda.is_available():
        assert load_config(["--prompt-data", str(data), "--device", "cuda"]).device == "cuda"
    else:
        with pytest.raises(ConfigError, match=r"--device cuda: no CUDA device here \(torch.cuda.is_available\(\) is False\); use --device cpu"):
            load_config(["--prompt-data", str(data), "--device", "cuda"])


def test_paths_are_checked(tmp_path, data):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for flag in ("--save", "--output-dir"):
        with pytest.raises(ConfigError, match=f"{flag} {a_file}: a file is there; expected a directory"):
            load_config(["--prompt-data", str(data), flag, str(a_file)])
    with pytest.raises(ConfigError, match=f"--load {tmp_path / 'none'}: no such checkpoint directory"):
        load_config(["--prompt-data", str(data), "--load", str(tmp_path / "none")])


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("env-kwargs: [1, 2]", r"c\.yaml: env-kwargs must be a mapping, got \[1, 2\]"),
        ("eval-dataset-env-kwargs: {a: 3}", r"c\.yaml: eval-dataset-env-kwargs\[a\] must be a mapping, got 3"),
        ("rollout-stop: </answer>", r"c\.yaml: rollout-stop must be a list of str, got '</answer>'"),
        ("rollout-stop-token-ids: [1, x]", r"c\.yaml: rollout-stop-token-ids\[1\] must be int, got 'x'"),
        ("kl-loss-type: k9", r"--kl-loss-type must be one of k1, k2, k3, low_var_kl, got 'k9'"),
        ("reset-seed: task", r"--reset-seed must be one of group, sample, got 'task'"),
        ("rollout-temperature: .nan", r"--rollout-temperature must be a finite number, got nan"),
        ("rollout-top-p: 2", r"--rollout-top-p must be in \(0, 1\], got 2.0"),
    ],
)
def test_yaml_values_are_checked_like_flags(tmp_path, data, yaml_text, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\n{yaml_text}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(config)])


def test_a_yaml_file_that_is_not_utf8_is_named_with_its_line(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_bytes(f"prompt-data: {data}\n".encode() + b"env-kwargs: {instruction: caf\xe9}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(["--config", str(config)])
    assert f"{config}:2: not UTF-8" in str(excinfo.value) and "byte 0xe9" in str(excinfo.value)


def test_megatron_flags_reach_the_megatron_config_from_yaml_and_the_command_line(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\ntrain-backend: megatron\nrecompute-granularity: full\nrecompute-method: uniform\n"
                      "make-vocab-size-divisible-by: 64\n")
    cfg = load_config(["--config", str(config), "--recompute-num-layers", "2", "--overlap-grad-reduce", "--distributed-timeout-minutes", "3",
                       "--no-accumulate-allreduce-grads-in-fp32"])
    parallel = cfg.megatron()
    assert parallel is not None and (parallel.recompute_granularity, parallel.recompute_method, parallel.recompute_num_layers) == ("full", "uniform", 2)
    assert (parallel.make_vocab_size_divisible_by, parallel.overlap_grad_reduce, parallel.distributed_timeout_minutes) == (64, True, 3)
    assert parallel.accumulate_allreduce_grads_in_fp32 is False
    assert load_config(["--prompt-data", str(data)]).megatron() is None  # the torch backend gets none


@pytest.mark.parametrize(("flags", "message"), [
    (["--tensor-model-parallel-size", "2"], "^--tensor-model-parallel-size: Megatron-LM's setting, which the torch trainer does not read: "
                                            "add --train-backend megatron$"),
    (["--sequence-parallel", "--recompute-granularity", "selective"], "^--sequence-parallel, --recompute-granularity: Megatron-LM's settings"),
    (["--train-backend", "megatron", "--context-parallel-size", "2"], "^--context-parallel-size 2: context parallelism needs Transformer Engine"),
    (["--train-backend", "megatron", "--recompute-granularity", "full"], "^--recompute-granularity full needs --recompute-method"),
    (["--train-backend", "megatron", "--tensor-model-parallel-size", "2"], "^--tensor-model-parallel-size 2 x --pipeline-model-parallel-size 1 "
                                                                           "needs 2 trainer ranks; --train-backend megatron runs one for now"),
    (["--train-backend", "megatron", "--use-distributed-optimizer"], "^--use-distributed-optimizer shards the optimizer state"),
    (["--train-backend", "megatron", "--launcher", "ray", "--colocate", "--actor-num-gpus-per-node", "2"],
     "^--train-backend megatron runs one trainer rank for now, and --actor-num-nodes x --actor-num-gpus-per-node ask for 2"),
    (["--train-backend", "fsdp"], "argument --train-backend: invalid choice: 'fsdp'"),
])
def test_megatron_settings_are_refused_in_one_line_naming_the_flag(data, flags, message):
    with pytest.raises(ConfigError, match=message) as failure:
        load_config(["--prompt-data", str(data), *flags])
    assert "\n" not in str(failure.value)


def test_train_backend_megatron_without_megatron_core_names_the_extra(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "megatron.core", None)  # what an environment without the package imports
    with pytest.raises(ConfigError, match=r"^--train-backend megatron needs Megatron-Core, which is not installed: pip install 'agentrl\[megatron\]'$"):
        load_config(["--prompt-data", str(data), "--train-backend", "megatron"])


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native_bf16(request, monkeypatch):
    """This CPU with (True) or without (False) native bf16, as ``--bf16 auto`` sees it."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: request.param)
    return request.param


def test_bf16_auto_is_the_default_and_resolves_once_for_the_device(data, native_bf16, caplog):
    caplog.set_level(logging.INFO, logger="agentrl.config")
    cfg = load_config(["--prompt-data", str(data)])
    assert cfg.bf16 is native_bf16 and cfg.trainer().bf16 is native_bf16 and cfg.to_dict()["bf16"] is native_bf16
    assert cfg.backend().dtype == ("bfloat16" if native_bf16 else "float32")
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("bf16:")] == [
        f"bf16: auto -> {'on' if native_bf16 else 'off'} ({precision.resolve_bf16('auto', 'cpu').reason}; "
        f"{'--no-bf16 for fp32' if native_bf16 else '--bf16 forces it'})"]
    caplog.clear()
    assert dataclasses.replace(cfg, lr=1e-5).bf16 is native_bf16 and not caplog.records  # resolved once: no second probe or line
    assert load_rollout_config(["--prompt-data", str(data), "--output", str(data.parent / "t.jsonl")]).bf16 is native_bf16


@pytest.mark.parametrize(("flags", "bf16"), [
    (["--bf16"], True), (["--no-bf16"], False), (["--bf16", "true"], True), (["--bf16", "false"], False), (["--bf16=FALSE"], False),
    (["--no-bf16", "--bf16"], True), (["--bf16", "--no-bf16"], False), (["--bf16", "--lr", "1e-5"], True),
])
def test_bf16_flags_override_auto(data, native_bf16, caplog, flags, bf16):
    cfg = load_config(["--prompt-data", str(data), *flags])
    assert cfg.bf16 is bf16 and cfg.trainer().bf16 is bf16 and not [r for r in caplog.records if r.getMessage().startswith("bf16:")]


def test_bf16_auto_on_the_command_line_and_yaml_over_each_other(tmp_path, data, native_bf16):
    config = tmp_path / "c.yaml"
    for text, bf16 in (("auto", native_bf16), ("true", True), ("false", False), ("on", True)):
        config.write_text(f"prompt-data: {data}\nbf16: {text}\n")
        assert load_config(["--config", str(config)]).bf16 is bf16
    config.write_text(f"prompt-data: {data}\nbf16: false\n")
    assert load_config(["--config", str(config), "--bf16", "auto"]).bf16 is native_bf16
    assert load_config(["--config", str(config), "--bf16"]).bf16 is True


@pytest.mark.parametrize(("yaml_text", "flags", "message"), [
    ("bf16: maybe", [], r"c\.yaml: bf16 must be true, false or auto, got 'maybe'"),
    ("bf16: 1", [], r"c\.yaml: bf16 must be true, false or auto, got 1"),
    ("bf16:", [], r"c\.yaml: bf16 must be true, false or auto, got None"),
    ("", ["--bf16", "maybe"], r"argument --bf16: expected true, false or auto, got 'maybe'"),
    ("", ["--no-bf16", "auto"], r"unrecognized arguments: auto"),
])
def test_bad_bf16_values_are_refused_naming_the_field(tmp_path, data, yaml_text, flags, message):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\n{yaml_text}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(["--config", str(config), *flags])
    with pytest.raises(ConfigError, match=r"^--bf16 must be true, false or auto, got 'yes'$"):
        dataclasses.replace(load_config(["--prompt-data", str(data), "--no-bf16"]), bf16="yes")
