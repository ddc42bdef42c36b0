"""The Megatron trainer makes the PyTorch trainer's updates: same log-probs, gradients, losses and
weights over two GRPO steps (fp32, 1e-5 relative), on Llama and Qwen3; it resumes exactly from
its own ``dist_checkpointing`` checkpoints and from agentrl's plain ones."""

from __future__ import annotations

import pytest
import torch

from agentrl.checkpoint import LoopState, read_checkpoint, save_checkpoint
from agentrl.errors import ConfigError, TrainingError
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.mcore import running
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig
from tests.trainers.megatron.megatron_cases import CONFIG, LOSS, make_sequences, megatron_grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def assert_same_metrics(got: dict[str, float], want: dict[str, float]) -> None:
    assert sorted(k for k in got if not k.startswith("perf/")) == sorted(k for k in want if not k.startswith("perf/"))
    for k, v in want.items():
        if not k.startswith("perf/"):
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_two_grpo_steps_match_the_torch_backend(model_dirs, megatron_trainer, kind):
    sequences = make_sequences(12)
    reference = TorchTrainer(model_dirs[kind], CONFIG, LOSS)
    trainer = megatron_trainer(model_dirs[kind], CONFIG, LOSS)
    start = {k: v.clone() for k, v in reference.named_weights()}
    for a, b in zip(trainer.logprobs(sequences), reference.logprobs(sequences)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    got, want = trainer.train_rollout(sequences, 12), reference.train_rollout(sequences, 12)
    assert_same_metrics(got, want)
    assert got["train/kl_loss"] > 0 and got["train/ppo_kl"] != 0  # the second step is off-policy and off the reference
    weights, expected = dict(trainer.named_weights()), dict(reference.named_weights())
    assert all(relative(weights[k], v) < 1e-5 for k, v in expected.items())
    moved = sum(float((expected[k] - start[k]).abs().sum()) for k in expected)
    assert sum(float(((weights[k] - start[k]) - (expected[k] - start[k])).abs().sum()) for k in expected) / moved < 1e-5


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
def test_gradients_of_one_step_match_the_torch_backend(model_dirs, megatron_trainer, per_token):
    sequences, config = make_sequences(10, group=3), TrainerConfig(bf16=False, micro_batch_size=3, calculate_per_token_loss=per_token)
    reference, trainer = TorchTrainer(model_dirs["qwen3"], config, LossConfig()), megatron_trainer(model_dirs["qwen3"], config, LossConfig())
    assert_same_metrics(trainer.accumulate_gradients(sequences), reference.accumulate_gradients(sequences))
    grads = megatron_grads(trainer)
    for name, p in reference.model.named_parameters():
        assert relative(grads[name], p.grad) < 1e-5, name


def test_reference_log_probs_come_from_the_initial_weights(model_dirs, megatron_trainer):
    sequences = make_sequences(8)
    trainer = megatron_trainer(model_dirs["llama"], TrainerConfig(bf16=False, lr=1e-2), LossConfig(use_kl_loss=True, kl_loss_coef=0.1))
    before = trainer.logprobs(sequences)
    trainer.train_rollout(sequences, 8)
    after = trainer.logprobs(sequences)
    for initial, ref, now, again in zip(before, trainer.reference_logprobs(sequences), after, trainer.logprobs(sequences)):
        assert torch.equal(ref, initial) and torch.equal(again, now)  # swapped in, and the trained weights restored exactly
    assert not all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("parallel", [MegatronConfig(), MegatronConfig(use_distributed_optimizer=True)], ids=["adam", "distributed_adam"])
def test_a_checkpoint_resumes_exactly(model_dirs, megatron_trainer, tmp_path, parallel):
    first, second = make_sequences(8, seed=1), make_sequences(8, seed=2)
    trainer = megatron_trainer(model_dirs["qwen3"], CONFIG, LOSS, parallel=parallel)
    trainer.train_rollout(first, 8)
    trainer.save_checkpoint(tmp_path / "ckpt")
    expected = trainer.train_rollout(second, 8)
    resumed = megatron_trainer(model_dirs["qwen3"], CONFIG, LOSS, parallel=parallel)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.steps == 2
    got = resumed.train_rollout(second, 8)
    assert {k: v for k, v in got.items() if not k.startswith("perf/")} == {k: v for k, v in expected.items() if not k.startswith("perf/")}
    weights = dict(resumed.named_weights())
    assert all(torch.equal(weights[k], v) for k, v in trainer.named_weights())


def test_agentrl_checkpoints_of_the_plain_state_resume_exactly(model_dirs, megatron_trainer, tmp_path):
    first, second = make_sequences(8, seed=1), make_sequences(8, seed=2)
    trainer = megatron_trainer(model_dirs["llama"], CONFIG, LOSS)
    trainer.train_rollout(first, 8)
    path = save_checkpoint(tmp_path, LoopState(1, {}), trainer.state_dict())  # torch.save; read back with weights_only
    expected = trainer.train_rollout(second, 8)
    resumed = megatron_trainer(model_dirs["llama"], CONFIG, LOSS)
    resumed.load_state_dict(read_checkpoint(path)[1])
    got = resumed.train_rollout(second, 8)
    assert got["train/pg_loss"] == expected["train/pg_loss"] and got["train/lr"] == expected["train/lr"]
    weights = dict(resumed.named_weights())
    assert all(torch.equal(weights[k], v) for k, v in trainer.named_weights())


def test_plain_state_is_refused_with_the_distributed_optimizer(model_dirs, megatron_trainer):
    trainer = megatron_trainer(model_dirs["llama"], CONFIG, LossConfig(), parallel=MegatronConfig(use_distributed_optimizer=True))
    with pytest.raises(ConfigError, match="use save_checkpoint/load_checkpoint"):
        trainer.state_dict()


def test_bf16_trains_with_fp32_master_weights_near_the_torch_backend(model_dirs, megatron_trainer):
    config = TrainerConfig(lr=1e-3, bf16=True, use_dynamic_batch_size=True, max_tokens_per_gpu=64)
    sequences = make_sequences(8)
    trainer = megatron_trainer(model_dirs["qwen3"], config, LossConfig())
    assert all(p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    with running(trainer.device):
        masters = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert masters and all(p.dtype == torch.float32 for p in masters)
    got, want = trainer.train_rollout(sequences, 8), TorchTrainer(model_dirs["qwen3"], config, LossConfig()).train_rollout(sequences, 8)
    assert got["train/pg_loss"] == pytest.approx(want["train/pg_loss"], rel=2e-2)
    assert got["train/grad_norm"] == pytest.approx(want["train/grad_norm"], rel=5e-2)


def test_save_hf_writes_a_directory_transformers_loads(model_dirs, megatron_trainer, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = megatron_trainer(model_dirs["qwen3"], TrainerConfig(bf16=False, lr=1e-2), LossConfig())
    trainer.train_rollout(make_sequences(4), 4)
    trainer.save_hf(tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trainer.named_weights())


@pytest.mark.parametrize("settings", [dict(gradient_checkpointing=True), dict(parallel=MegatronConfig(recompute_granularity="selective"))],
                         ids=["full_recompute", "selective_recompute"])
def test_recomputation_gives_the_same_gradients(model_dirs, megatron_trainer, settings):
    sequences, parallel = make_sequences(8), settings.pop("parallel", None)
    plain = megatron_trainer(model_dirs["qwen3"], TrainerConfig(bf16=False), LossConfig())
    recomputing = megatron_trainer(model_dirs["qwen3"], TrainerConfig(bf16=False, **settings), LossConfig(), parallel=parallel)
    assert recomputing.model.config.recompute_granularity == ("full" if settings else "selective")
    plain.accumulate_gradients(sequences)
    recomputing.accumulate_gradients(sequences)
    want, got = megatron_grads(plain), megatron_grads(recomputing)
    assert all(torch.equal(got[k], v) for k, v in want.items())


def test_non_finite_gradients_stop_the_run_before_the_weights_change(model_dirs, megatron_trainer, monkeypatch):
    """Megatron's optimizer steps on NaN gradients without a loss scaler (bf16, fp32): the trainer checks first."""
    import agentrl.trainers.megatron.trainer
    from tests.trainers.test_torch_trainer import nan_loss

    monkeypatch.setattr(agentrl.trainers.megatron.trainer, "policy_loss", nan_loss(agentrl.trainers.megatron.trainer.policy_loss))
    trainer = megatron_trainer(model_dirs["llama"], CONFIG, LOSS)
    before = {k: v.clone() for k, v in trainer.named_weights()}
    with pytest.raises(TrainingError, match=r"optimizer step 1: the gradients are not finite \(grad norm nan\), so the weights were not updated"):
        trainer.train_rollout(make_sequences(12), 12)
    assert all(torch.equal(v, before[k]) for k, v in trainer.named_weights())
