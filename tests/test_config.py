"""Training config: YAML and flags with slime's names, the batch identity, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentrl.config import load_config
from agentrl.errors import ConfigError


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"input": "1+1?", "label": "2"}\n')
    return path


def test_yaml_then_flags_override(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text(f"prompt-data: {data}\nrollout_batch_size: 4\nn-samples-per-prompt: 8\nlr: 1e-6\nenv-kwargs: {{format_reward: 0.1}}\n")
    cfg = load_config(["--config", str(config), "--lr", "2e-6", "--use-kl-loss", "--kl-loss-coef", "0.01"])
    assert (cfg.rollout_batch_size, cfg.n_samples_per_prompt, cfg.lr, cfg.use_kl_loss) == (4, 8, 2e-6, True)
    assert cfg.env_kwargs == {"format_reward": 0.1}
    assert cfg.loss().kl_loss_coef == 0.01 and cfg.trainer().lr == 2e-6 and cfg.rollout().n_samples_per_prompt == 8


def test_stop_flags_and_per_eval_dataset_env_kwargs(tmp_path, data):
    config = tmp_path / "c.yaml"
    config.write_text(
        f"prompt-data: {data}\neval-prompt-data: [a, {data}, b, {data}]\nenv-kwargs: {{k: 1, s: on}}\n"
        "eval-env-kwargs: {k: 2}\neval-dataset-env-kwargs: {b: {s: off}}\nrollout-stop: ['</search>']\n")
    cfg = load_config(["--config", str(config), "--rollout-stop-token-ids", "7", "9"])
    assert cfg.rollout().stop == ("</search>",) and cfg.rollout(eval=True).stop_token_ids == (7, 9)
    assert cfg.env_kwargs_for(None) == {"k": 1, "s": True}
    assert cfg.env_kwargs_for("a") == {"k": 2, "s": True} and cfg.env_kwargs_for("b") == {"k": 2, "s": False}
    config.write_text(f"prompt-data: {data}\neval-prompt-data: [a, {data}]\neval-dataset-env-kwargs: {{c: {{s: off}}}}\n")
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
