"""slime's data flags (eval keys, prompt-length filter, row slices) and ``--use-wandb`` in
offline mode (no network)."""

from __future__ import annotations

import json

import pytest

from agentrl.compat.slime_data import drop_long_prompts, eval_task_keys, prompt_token_counter
from agentrl.compat.slime_wandb import metric_sinks, open_wandb
from agentrl.config import load_config
from agentrl.data import load_tasks, split_row_slice
from agentrl.envs.core import Task
from agentrl.errors import DataError
from agentrl.metrics import MetricsLogger


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join(json.dumps({"input": f"q{i}", "label": str(i), "question": f"Q{i}", "answer": f"A{i}"}) + "\n" for i in range(10)))
    return path


def test_row_slices_as_slime_reads_them(data):
    assert split_row_slice(f"{data}@[2:5]") == (data, slice(2, 5)) and split_row_slice(data) == (data, None)
    assert [t.label for t in load_tasks(f"{data}@[2:5]")] == ["2", "3", "4"]
    assert [t.index for t in load_tasks(f"{data}@[-2:]")] == [0, 1] and [t.label for t in load_tasks(f"{data}@[-2:]")] == ["8", "9"]
    assert len(load_tasks(f"{data}@[:3]")) == 3
    with pytest.raises(DataError, match="the slice slice\\(20, 30, None\\) of the file holds no rows"):
        load_tasks(f"{data}@[20:30]")


def test_eval_keys_and_long_prompts(data):
    cfg = load_config(["--prompt-data", str(data), "--eval-input-key", "question", "--eval-label-key", "answer"])
    assert [(t.prompt, t.label) for t in load_tasks(data, eval_task_keys(cfg))[:2]] == [("Q0", "A0"), ("Q1", "A1")]
    assert eval_task_keys(load_config(["--prompt-data", str(data)])).input_key == "input"
    tasks = [Task("short"), Task("a much longer prompt")]
    assert drop_long_prompts(tasks, 2, lambda t: len(str(t.prompt).split()), where="d") == [tasks[0]]
    assert drop_long_prompts(tasks, None, len, where="d") == tasks
    with pytest.raises(DataError, match="every prompt is longer than --rollout-max-prompt-len 0 tokens"):
        drop_long_prompts(tasks, 0, lambda t: 1, where="d")


def test_prompt_tokens_are_counted_as_rendered(tokenizer):
    task = Task([{"role": "user", "content": "What is 2 + 2?"}])
    rendered = tokenizer.apply_chat_template(task.prompt, tokenize=False, add_generation_prompt=True)
    assert prompt_token_counter(tokenizer, apply_chat_template=True)(task) == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert prompt_token_counter(tokenizer, apply_chat_template=False)(Task("What is 2 + 2?")) == len(tokenizer.encode("What is 2 + 2?"))


def test_use_wandb_logs_every_record_offline(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    cfg = load_config(["--prompt-data", str(data), "--output-dir", str(out), "--use-wandb", "--wandb-mode", "offline",
                       "--wandb-project", "agentrl-test", "--wandb-group", "quickstart", "--disable-wandb-random-suffix"])
    sink = open_wandb(cfg)
    assert sink is not None and sink.run.name == "quickstart" and sink.run.group == "quickstart"
    logger = MetricsLogger(out, sinks=[sink])
    logger.log(1, {"rollout/reward_mean": 0.5, "rollout/termination/done": 4, "note": "text"})
    logger.close()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert open_wandb(load_config(["--prompt-data", str(data)])) is None and metric_sinks(load_config(["--prompt-data", str(data)])) == []
