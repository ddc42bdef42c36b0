"""``--use-liger-kernel``: refused with a reason where it cannot run (CPU, no liger-kernel), the
Megatron layer spec's norms computed by the given kernel, and on a GPU (marked ``gpu``, skipped on
CI) the same log-probs and a working step with liger's kernels, for both backends.
``--torch-compile``: the compiled layers train the same step as the eager ones (CPU, inductor)."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from agentrl.errors import ConfigError
from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.build import build_trainer
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig
from tests.trainers.megatron.megatron_cases import make_sequences, save_tiny_model

LIGER = TrainerConfig(bf16=False, use_liger_kernel=True)


def test_liger_on_a_cpu_is_refused_naming_the_device(tiny_llama_dir):
    with pytest.raises(ConfigError, match=r"^--use-liger-kernel runs Triton kernels on CUDA; this trainer runs on cpu$"):
        TorchTrainer(tiny_llama_dir, LIGER, LossConfig(), device="cpu")


def test_liger_with_the_megatron_backend_on_a_cpu_is_refused_naming_the_device(tiny_llama_dir):
    with pytest.raises(ConfigError, match=r"^--use-liger-kernel runs Triton kernels on CUDA; this trainer runs on cpu$"):
        build_trainer("megatron", tiny_llama_dir, LIGER, LossConfig(), device="cpu")


def test_liger_with_torch_compile_is_refused_before_the_model_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"^--use-liger-kernel with --torch-compile: torch.compile fails tracing liger-kernel's"):
        TorchTrainer(tmp_path / "no-model-here", dataclasses.replace(LIGER, torch_compile=True), LossConfig(), device="cpu")


def test_torch_compile_with_the_megatron_backend_is_refused(tiny_llama_dir):
    with pytest.raises(ConfigError, match=r"^--torch-compile is for --train-backend torch"):
        build_trainer("megatron", tiny_llama_dir, TrainerConfig(bf16=False, torch_compile=True), LossConfig(), device="cpu")


def test_megatron_norms_run_the_given_kernel_with_the_same_logits(tmp_path):
    """The Megatron layer spec's norm kernel (liger's RMSNorm on GPUs) replaces every norm: input,
    pre-MLP, final and Qwen3's q/k norms. Here a plain-PyTorch kernel that counts its calls."""
    from transformers import AutoConfig

    from agentrl.trainers.batching import collate
    from agentrl.trainers.megatron import checkpoint, parallel
    from agentrl.trainers.megatron.config import MegatronConfig
    from agentrl.trainers.megatron.convert import Geometry
    from agentrl.trainers.megatron.forward import decoder_output
    from agentrl.trainers.megatron.mcore import running
    from agentrl.trainers.megatron.model import FusedRMSNorm, build_model, padded_vocab_size

    calls = []

    def rms_norm(x, weight, eps):
        calls.append(tuple(x.shape))
        return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)

    model_dir = save_tiny_model("qwen3", tmp_path)
    hf = AutoConfig.from_pretrained(model_dir)
    batch = collate(make_sequences(4, group=2))
    with running(torch.device("cpu")), torch.no_grad():
        parallel.acquire(MegatronConfig(), torch.device("cpu"), seed=0)
        try:
            outputs = []
            for kernel in (None, rms_norm):
                model = build_model(hf, MegatronConfig(), bf16=False, cpu=True, norm_kernel=kernel)
                geometry = Geometry.of(hf, padded_vocab=padded_vocab_size(hf.vocab_size, MegatronConfig()), tp=1)
                checkpoint.load_weights(model_dir, model, geometry, tied=bool(hf.tie_word_embeddings))
                outputs.append(decoder_output(model, batch))
        finally:
            parallel.release()
    assert sum(isinstance(m, FusedRMSNorm) for m in model.modules()) == 4 * hf.num_hidden_layers + 1  # input, pre-MLP, q, k; final
    assert len(calls) == 4 * hf.num_hidden_layers + 1
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-6, atol=1e-6)


def test_compiled_decoder_layers_train_the_same_step_as_eager_ones(tiny_model_dir):
    sequences = make_sequences(8, group=2)
    config = TrainerConfig(bf16=False, use_dynamic_batch_size=True, max_tokens_per_gpu=256)
    eager = TorchTrainer(tiny_model_dir, config, LossConfig(), device="cpu")
    compiled = TorchTrainer(tiny_model_dir, dataclasses.replace(config, torch_compile=True), LossConfig(), device="cpu")
    assert compiled.model.get_decoder().layers[0]._compiled_call_impl is not None  # nn.Module.compile's mark
    want, got = eager.accumulate_gradients(sequences), compiled.accumulate_gradients(sequences)
    assert got["train/pg_loss"] == pytest.approx(want["train/pg_loss"], rel=1e-5, abs=1e-7)
    grads = {name: p.grad for name, p in compiled.model.named_parameters()}
    for name, p in eager.model.named_parameters():
        assert float((grads[name] - p.grad).norm() / p.grad.norm()) < 1e-4, name


def test_a_compiled_trainers_reference_model_keeps_the_initial_weights(tiny_model_dir):
    sequences = make_sequences(4, group=2)
    kl = LossConfig(use_kl_loss=True, kl_loss_coef=0.1)
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, lr=1e-2, torch_compile=True), kl, device="cpu")
    initial = torch.cat(trainer.logprobs(sequences))
    trainer.train_rollout(sequences, 4)
    assert not torch.allclose(torch.cat(trainer.logprobs(sequences)), initial, atol=1e-4)  # the policy moved
    assert trainer.ref_model is not None
    torch.testing.assert_close(torch.cat(trainer._logprobs(trainer.ref_model, sequences)), initial, rtol=1e-5, atol=1e-5)  # the reference did not


def test_torch_compile_of_a_model_without_decoder_layers_is_refused():
    from agentrl.trainers.fused_kernels import compile_decoder_layers

    class NoLayers(torch.nn.Module):
        def get_decoder(self):
            return torch.nn.Linear(1, 1)

    with pytest.raises(ConfigError, match=r"^--torch-compile compiles the decoder's layers; NoLayers has no decoder.layers$"):
        compile_decoder_layers(NoLayers())


def test_liger_not_installed_names_the_extra(tiny_llama_dir, monkeypatch):
    from agentrl.trainers.fused_kernels import apply_liger_kernel

    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    with pytest.raises(ConfigError, match=r"^--use-liger-kernel needs liger-kernel \(.*\): pip install 'agentrl\[kernels\]'$"):
        apply_liger_kernel(torch.nn.Linear(1, 1), torch.device("cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_liger_kernels_keep_the_logprobs_and_train(tmp_path, kind):
    model_dir = save_tiny_model(kind, tmp_path)
    sequences = make_sequences(8, group=1)
    plain = TorchTrainer(model_dir, TrainerConfig(bf16=True, lr=1e-4), LossConfig(), device="cuda")
    fused = TorchTrainer(model_dir, TrainerConfig(bf16=True, lr=1e-4, use_liger_kernel=True), LossConfig(), device="cuda")
    want, got = torch.cat(plain.logprobs(sequences)), torch.cat(fused.logprobs(sequences))
    assert float((got - want).abs().mean()) < 2e-2
    assert fused.model.get_decoder().layers[0].mlp._get_name() == "LigerSwiGLUMLP"  # liger rebinds forward and the name, not the class
    assert fused.train_rollout(sequences, 8)["train/grad_norm"] == pytest.approx(plain.train_rollout(sequences, 8)["train/grad_norm"], rel=5e-2)


@pytest.mark.gpu
def test_liger_norms_keep_the_megatron_backends_logprobs_and_train(tmp_path):
    model_dir = save_tiny_model("qwen3", tmp_path)
    sequences = make_sequences(8, group=1)
    plain = build_trainer("megatron", model_dir, TrainerConfig(bf16=True, lr=1e-4), LossConfig(), device="cuda")
    want = torch.cat(plain.logprobs(sequences))
    plain_norm = plain.train_rollout(sequences, 8)["train/grad_norm"]
    plain.close()
    fused = build_trainer("megatron", model_dir, TrainerConfig(bf16=True, lr=1e-4, use_liger_kernel=True), LossConfig(), device="cuda")
    assert float((torch.cat(fused.logprobs(sequences)) - want).abs().mean()) < 2e-2
    assert fused.train_rollout(sequences, 8)["train/grad_norm"] == pytest.approx(plain_norm, rel=5e-2)
    fused.close()
