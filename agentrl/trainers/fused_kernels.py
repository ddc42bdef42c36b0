"""Fused kernels: liger-kernel's (``--use-liger-kernel``, both backends) and ``torch.compile``'s
(``--torch-compile``, the PyTorch backend).

Liger's Triton kernels replace a Hugging Face model's RMSNorm, SwiGLU MLP and rotary embedding:
one kernel each instead of the several elementwise kernels (fp32 casts, ``pow``, ``mean``,
``rsqrt``, ``mul``, ``silu``, ``cat``) eager PyTorch runs, forward and backward. The LM head and
the log-probs stay agentrl's (:mod:`agentrl.trainers.logprobs`): liger's fused linear
cross-entropy gives neither entropies nor per-token gradients.

Liger patches the model instance and, as liger does, its family's ``transformers`` modeling module
for the rest of the process (the rotary function is module-level). It runs on CUDA only. The
Megatron backend takes liger's RMSNorm into its layer spec (:func:`liger_rms_norm`); its SwiGLU is
Megatron's own fused one.

``torch.compile`` of each decoder layer fuses what liger does not (residual adds, casts, the
projections' epilogues) and, on GPUs where the trainer is bound by launching ~30,000 kernels a
step from Python (docs/benchmarks.md), cuts the host time per layer. The packed attention stays
eager where it breaks the graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from agentrl.errors import ConfigError


def apply_liger_kernel(model: nn.Module, device: torch.device) -> None:
    """Swap ``model``'s norms, MLPs and rotary embedding for liger-kernel's fused ones.

    Raises:
        ConfigError: a device other than CUDA, liger-kernel not installed, or a model family
            liger has no kernels for.
    """
    _require_liger(device)
    from liger_kernel.transformers import _apply_liger_kernel_to_instance
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"--use-liger-kernel: liger-kernel has no kernels for model_type {model_type!r}")
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)


def liger_rms_norm(device: torch.device) -> Callable[..., torch.Tensor]:
    """liger-kernel's fused RMSNorm function, ``(x, weight, eps) -> y`` (Llama's casting: the norm
    in fp32, scaled by the weight in its dtype), for the Megatron backend's norms.

    Raises:
        ConfigError: a device other than CUDA, or liger-kernel not installed.
    """
    _require_liger(device)
    from liger_kernel.transformers.functional import liger_rms_norm as rms_norm

    return rms_norm  # type: ignore[no-any-return]  # liger-kernel is untyped


def _require_liger(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigError(f"--use-liger-kernel runs Triton kernels on CUDA; this trainer runs on {device}")
    try:
        import liger_kernel.transformers  # noqa: F401  # the kernels' package, imported by the callers
    except ImportError as e:
        raise ConfigError(f"--use-liger-kernel needs liger-kernel ({e}): pip install 'agentrl[kernels]'") from e


def compile_decoder_layers(model: nn.Module) -> None:
    """Compile every decoder layer of a Hugging Face causal LM in place (``torch.compile``, dynamic
    shapes: packed micro-batches vary in length).

    Raises:
        ConfigError: a model whose decoder has no ``layers`` list.
    """
    layers = getattr(model.get_decoder(), "layers", None)  # type: ignore[operator]  # an HF model's method
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"--torch-compile compiles the decoder's layers; {type(model).__name__} has no decoder.layers")
    for layer in layers:
        layer.compile(dynamic=True)
