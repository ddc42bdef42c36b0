"""MegatronConfig refuses what the backend cannot run, in one line naming the flag."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from agentrl.errors import ConfigError
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.model import check_divisible, padded_vocab_size


@pytest.mark.parametrize(("fields", "message"), [
    (dict(tensor_model_parallel_size=0), "--tensor-model-parallel-size must be an integer >= 1, got 0"),
    (dict(pipeline_model_parallel_size=True), "--pipeline-model-parallel-size must be an integer >= 1, got True"),
    (dict(context_parallel_size=2), "--context-parallel-size 2: context parallelism needs Transformer Engine"),
    (dict(sequence_parallel=True), "--sequence-parallel needs --tensor-model-parallel-size > 1"),
    (dict(recompute_granularity="most"), "--recompute-granularity 'most' is not one of full, selective"),
    (dict(recompute_granularity="full"), "--recompute-granularity full needs --recompute-method"),
    (dict(recompute_method="uniform", recompute_num_layers=1), "apply only with --recompute-granularity full"),
    (dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=0), "--recompute-num-layers must be an integer >= 1"),
    (dict(make_vocab_size_divisible_by=0), "--make-vocab-size-divisible-by must be an integer >= 1"),
])
def test_invalid_settings_name_their_flag(fields, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")) as info:
        MegatronConfig(**fields)
    assert "\n" not in str(info.value)


def test_the_world_and_the_model_must_split_evenly():
    config = MegatronConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2)
    config.check_world(8)
    with pytest.raises(ConfigError, match="6 ranks do not split into copies of --tensor-model-parallel-size 2 x --pipeline-model-parallel-size 2"):
        config.check_world(6)
    model = LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=3, num_hidden_layers=3)
    with pytest.raises(ConfigError, match="--tensor-model-parallel-size 2 does not divide the model's 3 key/value heads"):
        check_divisible(model, MegatronConfig(tensor_model_parallel_size=2))
    with pytest.raises(ConfigError, match="--pipeline-model-parallel-size 2 does not divide the model's 3 layers"):
        check_divisible(model, MegatronConfig(pipeline_model_parallel_size=2))


def test_gradient_checkpointing_means_full_recompute_unless_one_is_set():
    recompute = MegatronConfig().with_recompute(True)
    assert (recompute.recompute_granularity, recompute.recompute_method, recompute.recompute_num_layers) == ("full", "uniform", 1)
    selective = MegatronConfig(recompute_granularity="selective")
    assert selective.with_recompute(True) is selective


def test_vocabulary_padding():
    assert padded_vocab_size(500, MegatronConfig()) == 512
    assert padded_vocab_size(512, MegatronConfig(tensor_model_parallel_size=2)) == 512
    assert padded_vocab_size(513, MegatronConfig(tensor_model_parallel_size=2)) == 768
