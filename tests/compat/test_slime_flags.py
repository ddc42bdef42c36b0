"""slime's flags on ``agentrl train``: every flag of slime's run scripts (a fixture recorded from
slime's scripts with the slime commit, ``scripts/slime_flag_fixtures.py``) and of the reshaped
Quick Start script is accepted, or refused with a reason naming what covers it."""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from pathlib import Path

import pytest

from agentrl.compat.slime_flags import NOTED, refusal
from agentrl.config import build_parser, load_config
from agentrl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "slime" / "run_script_flags.txt"
QUICKSTART = ROOT / "examples" / "slime_quickstart" / "run.sh"
REASON = re.compile(r"issue \d+|--[a-z]|not (implemented|supported)|agentrl ")


def fixture_flags() -> list[list[str]]:
    return [line.split() for line in FIXTURE.read_text().splitlines() if line.startswith("--")]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"input": f"What is {i} + 1?", "label": str(i + 1)}) + "\n" for i in range(4)))
    return path


def test_the_fixture_names_its_slime_commit_and_holds_the_quick_start_flags():
    header = FIXTURE.read_text().splitlines()[:2]
    assert re.fullmatch(r"# slime commit [0-9a-f]{40}", header[1])
    flags = {tokens[0] for tokens in fixture_flags()}
    assert len(flags) > 200 and {"--optimizer", "--ref-load", "--kl-coef", "--balance-data", "--eval-max-response-len", "--use-wandb"} <= flags


@pytest.mark.parametrize("tokens", fixture_flags(), ids=lambda tokens: tokens[0])
def test_every_flag_of_slimes_run_scripts_is_accepted_or_refused_with_a_reason(data, tokens):
    flag = tokens[0]
    try:
        load_config(["--prompt-data", str(data), "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", *tokens])
    except ConfigError as e:
        message = str(e)
        assert "unrecognized arguments" not in message, f"{flag} is refused without a reason: {message}"
        assert "\n" not in message
        if "not supported:" in message:  # refused: the reason names the issue or flag that covers it
            reason = message.split(f"{flag} (", 1)[1]
            assert REASON.search(reason), f"{flag}: the refusal names no issue, flag or cause: {message}"
        else:  # accepted, and its value (a path of slime's machines, a value agentrl lacks) was checked
            assert flag in message or flag.replace("-", "_")[2:] in message or "--" in message, message


def test_refusals_name_the_issue_that_covers_them():
    assert "--train-backend megatron takes --tensor-model-parallel-size" in refusal("--num-layers")
    assert "--hf-checkpoint" in refusal("--moe-router-topk") and "--actor-num-nodes" in refusal("--use-distributed-post")
    assert "--weight-sync" in refusal("--update-weight-transport")
    assert refusal("--rollout-batch-size") is None
    with pytest.raises(ConfigError) as failure:
        load_config(["--num-layers", "40", "--spec", "a", "b", "--use-opd"])
    message = str(failure.value)
    assert message.startswith("slime flags not supported: --num-layers (a Megatron model/parallelism flag agentrl does not take")
    assert "--spec (" in message and "--use-opd (on-policy distillation is not implemented in agentrl)" in message


def test_slimes_train_backend_and_megatron_parallel_flags_are_accepted(data):
    cfg = load_config(["--prompt-data", str(data), "--rollout-batch-size", "2", "--n-samples-per-prompt", "2", "--train-backend", "megatron",
                       "--tensor-model-parallel-size", "1", "--pipeline-model-parallel-size", "1", "--context-parallel-size", "1",
                       "--recompute-granularity", "selective", "--distributed-timeout-minutes", "5"])
    assert cfg.train_backend == "megatron" and cfg.megatron() is not None and not cfg.slime_args


def test_close_match_hints_only_when_close(data):
    with pytest.raises(ConfigError, match=r"--rollout-batchsize \(did you mean --rollout-batch-size\?\)"):
        load_config(["--prompt-data", str(data), "--rollout-batchsize", "3"])
    with pytest.raises(ConfigError) as failure:
        load_config(["--prompt-data", str(data), "--frobnicate-the-widget", "3"])
    assert "did you mean" not in str(failure.value)


def test_noted_flags_are_logged_and_reach_plugins(data, caplog):
    with caplog.at_level(logging.WARNING):
        cfg = load_config(["--prompt-data", str(data), "--balance-data", "--log-probs-chunk-size", "1024", "--sglang-server-concurrency", "64",
                           "--sglang-mem-fraction-static", "0.7", "--n-samples-per-prompt", "2"])
    assert cfg.slime_args == {"balance_data": True, "log_probs_chunk_size": 1024, "sglang_server_concurrency": 64}
    assert cfg.sglang_args == {"mem_fraction_static": "0.7"}
    text = caplog.text
    assert "--balance-data True: accepted, no effect here (one trainer process" in text
    assert "--sglang-mem-fraction-static 0.7: the embedded engine is not SGLang" in text
    assert all(note for _, note in NOTED.values())


def test_slimes_algorithm_and_optimizer_flags_carry_their_meaning(data, tmp_path):
    cfg = load_config(["--prompt-data", str(data), "--n-samples-per-prompt", "2", "--optimizer", "adam", "--adam-eps", "1e-5",
                       "--lr-warmup-fraction", "0.25", "--num-rollout", "8", "--kl-coef", "0", "--reward-key", "score",
                       "--eval-prompt-data", "aime", f"{data}@[0:2]", "--eval-top-p", "0.5", "--eval-top-k", "5", "--eval-max-response-len", "7"])
    trainer = cfg.trainer()
    assert trainer.adam_eps == 1e-5 and trainer.lr_warmup_iters == 2 and trainer.lr_decay_iters == 8
    evaluation = cfg.rollout(eval=True)
    assert (evaluation.top_p, evaluation.top_k, evaluation.max_new_tokens) == (0.5, 5, 7) and cfg.rollout().top_p == 1.0
    with pytest.raises(ConfigError, match="--kl-coef 0.1: KL reward shaping is not implemented; use --use-kl-loss --kl-loss-coef 0.1"):
        load_config(["--prompt-data", str(data), "--kl-coef", "0.1"])
    with pytest.raises(ConfigError, match="argument --optimizer: invalid choice: .sgd. \\(choose from .adam.\\)"):
        load_config(["--prompt-data", str(data), "--optimizer", "sgd"])
    with pytest.raises(ConfigError, match="--rollout-function-path my.rollout: a custom rollout loop would replace agentrl's"):
        load_config(["--prompt-data", str(data), "--rollout-function-path", "my.rollout"])
    assert load_config(["--prompt-data", str(data), "--rollout-function-path", "slime.rollout.sglang_rollout.generate_rollout"])


def test_load_without_a_checkpoint_starts_fresh_when_ref_load_is_given(data, tmp_path):
    empty = tmp_path / "ckpt"
    with pytest.raises(ConfigError, match="no such checkpoint directory"):
        load_config(["--prompt-data", str(data), "--load", str(empty)])
    assert load_config(["--prompt-data", str(data), "--load", str(empty), "--ref-load", str(tmp_path / "ref_torch_dist")]).load is None
    (empty / "step_00002").mkdir(parents=True)
    assert load_config(["--prompt-data", str(data), "--load", str(empty), "--ref-load", "x"]).load == str(empty)


def test_the_quick_start_script_parses(tmp_path):
    recorder = importlib.util.spec_from_file_location("slime_flag_fixtures", ROOT / "scripts" / "slime_flag_fixtures.py")
    assert recorder is not None and recorder.loader is not None
    module = importlib.util.module_from_spec(recorder)
    recorder.loader.exec_module(module)
    text = QUICKSTART.read_text().replace("${DATA}", str(tmp_path)).replace("${OUT}", str(tmp_path / "out")).replace('${NUM_ROLLOUT:-3}', "3")
    tokens = [t.strip('"') for t in module.trainer_tokens(text)]
    assert "--optimizer" in tokens and "--sglang-mem-fraction-static" in tokens and "--eval-top-p" in tokens
    data = json.dumps({"prompt": [{"role": "user", "content": "What is 1 + 1?"}], "label": "2"}) + "\n"
    (tmp_path / "train.jsonl").write_text(data * 4)
    (tmp_path / "eval.jsonl").write_text(data * 8)
    cfg = load_config(tokens)
    assert cfg.rm_type == "slime_math" and cfg.global_batch_size == 16 and cfg.eval_datasets()["aime"].name == "eval.jsonl@[0:4]"
    assert cfg.load is None  # an empty --load with --ref-load: a fresh start
    assert {f"--{o}" for o in ("optimizer", "ref-load", "balance-data")} <= {s for a in build_parser()._actions for s in a.option_strings} | {"--balance-data"}
