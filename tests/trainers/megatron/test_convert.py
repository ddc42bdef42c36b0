"""Hugging Face <-> Megatron conversion: the tables invert each other, a model goes HF -> Megatron
-> HF bit for bit (in a trainer, and through ``agentrl convert``), and what the backend cannot
reproduce is refused by name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from agentrl.cli import main
from agentrl.errors import ConfigError, ModelError
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.megatron.convert import LAYER_RULES, MODEL_RULES, Geometry, to_hf, to_megatron, tp_shard
from agentrl.trainers.megatron.model import family
from agentrl.trainers.torch_trainer import TrainerConfig
from tests.trainers.megatron.megatron_cases import MODELS, save_tiny_model

GEOMETRY = Geometry(heads=8, groups=2, head_dim=3, vocab=10, padded_vocab=16, tp=2)


def hf_state(model_dir) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").state_dict()


@pytest.mark.parametrize("rule", [*LAYER_RULES, *MODEL_RULES], ids=lambda r: r.megatron)
def test_each_rule_round_trips_and_fuses_as_megatron_lays_out(rule):
    shapes = {"qkv": [(24, 5), (6, 5), (6, 5)], "gate_up": [(8, 5), (8, 5)]}.get(rule.fusion, [(10, 5) if rule.vocab else (4, 6)])
    if rule.megatron.endswith("bias"):
        shapes = [s[:1] for s in shapes]
    tensors = [torch.randn(s) for s in shapes]
    full = to_megatron(rule, tensors, GEOMETRY)
    assert all(torch.equal(a, b) for a, b in zip(to_hf(rule, full, GEOMETRY), tensors, strict=True))
    if rule.fusion == "qkv":  # group 0: its 4 query heads, then its key, then its value
        torch.testing.assert_close(full[:12], tensors[0][:12], rtol=0, atol=0)
        torch.testing.assert_close(full[12:15], tensors[1][:3], rtol=0, atol=0)
        torch.testing.assert_close(full[15:18], tensors[2][:3], rtol=0, atol=0)
    if rule.fusion == "gate_up":  # TP shard 1: the second halves of gate and up
        shard = tp_shard(full, rule, 1, 2)
        assert torch.equal(shard, torch.cat((tensors[0][4:], tensors[1][4:])))
    if rule.vocab:
        assert full.shape[0] == 16 and not full[10:].any()


@pytest.mark.parametrize("kind", list(MODELS))
def test_hf_to_megatron_to_hf_is_bit_exact(model_dirs, megatron_trainer, kind):
    expected = hf_state(model_dirs[kind])
    trainer = megatron_trainer(model_dirs[kind], TrainerConfig(bf16=False), LossConfig())
    exported = dict(trainer.named_weights())
    assert sorted(exported) == sorted(expected)
    for name, tensor in expected.items():
        assert exported[name].dtype == tensor.dtype and torch.equal(exported[name], tensor), name
    assert trainer.num_parameters == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_dirs[kind]).parameters())


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_agentrl_convert_round_trips_a_bf16_model_exactly(tmp_path, kind):
    source = save_tiny_model(kind, tmp_path / "hf", dtype=torch.bfloat16)
    assert main(["convert", "--to", "megatron", "--input", str(source), "--output", str(tmp_path / "mcore")]) == 0
    assert main(["convert", "--to", "hf", "--input", str(tmp_path / "mcore"), "--output", str(tmp_path / "back")]) == 0
    expected, back = load_file(source / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(back) == sorted(expected)  # tied lm_head.weight is left out, as save_pretrained does
    for name, tensor in expected.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(back[name], tensor), name
    config, source_config = (AutoConfig.from_pretrained(d).to_dict() for d in (tmp_path / "back", source))
    assert config.pop("_name_or_path") != source_config.pop("_name_or_path") and config == source_config


def test_a_trainer_starts_from_a_converted_checkpoint_as_from_the_hf_directory(model_dirs, megatron_trainer, tmp_path):
    assert main(["convert", "--to", "megatron", "--input", str(model_dirs["qwen2"]), "--output", str(tmp_path / "mcore")]) == 0
    from_hf = dict(megatron_trainer(model_dirs["qwen2"], TrainerConfig(bf16=False), LossConfig()).named_weights())
    from_checkpoint = dict(megatron_trainer(tmp_path / "mcore", TrainerConfig(bf16=False), LossConfig()).named_weights())
    assert all(torch.equal(from_checkpoint[k], v) for k, v in from_hf.items())


@pytest.mark.parametrize(("argv", "message"), [
    (["--to", "hf"], "--to hf converts a Megatron checkpoint"),
    (["--to", "megatron", "--output-not-empty"], "is not empty"),
])
def test_convert_refuses_the_wrong_input_or_a_used_output(model_dirs, tmp_path, capsys, argv, message):
    output = tmp_path / "out"
    if "--output-not-empty" in argv:
        argv = argv[:2]
        output.mkdir()
        (output / "keep.txt").write_text("x")
    assert main(["convert", *argv, "--input", str(model_dirs["llama"]), "--output", str(output)]) == ConfigError.exit_code
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("change", "message"), [
    (dict(model_type_override="gpt2"), "model_type llama, qwen2, qwen3"),
    (dict(attention_bias=True), "attention_bias=True"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "rope_parameters"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}), "low_freq_factor"),
])
def test_what_the_backend_cannot_reproduce_is_refused_by_name(change, message):
    override = change.pop("model_type_override", None)
    config = LlamaConfig(**change)
    if override:
        config.model_type = override
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace("[", r"\[")):
        family(config)
