"""Fused kernels for the PyTorch backend from liger-kernel (``--use-liger-kernel``).

Liger's Triton kernels replace a Hugging Face model's RMSNorm, SwiGLU MLP and rotary embedding:
one kernel each instead of the several elementwise kernels (fp32 casts, ``pow``, ``mean``,
``rsqrt``, ``mul``, ``silu``, ``cat``) eager PyTorch runs, forward and backward. The LM head and
the log-probs stay agentrl's (:mod:`agentrl.trainers.logprobs`): liger's fused linear
cross-entropy gives neither entropies nor per-token gradients.

Liger patches the model instance and, as liger does, its family's ``transformers`` modeling module
for the rest of the process (the rotary function is module-level). It runs on CUDA only.
"""

from __future__ import annotations

import torch
from torch import nn

from agentrl.errors import ConfigError


def apply_liger_kernel(model: nn.Module, device: torch.device) -> None:
    """Swap ``model``'s norms, MLPs and rotary embedding for liger-kernel's fused ones.

    Raises:
        ConfigError: a device other than CUDA, liger-kernel not installed, or a model family
            liger has no kernels for.
    """
    if device.type != "cuda":
        raise ConfigError(f"--use-liger-kernel runs Triton kernels on CUDA; this trainer runs on {device}")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as e:
        raise ConfigError(f"--use-liger-kernel needs liger-kernel ({e}): pip install 'agentrl[kernels]'") from e
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(f"--use-liger-kernel: liger-kernel has no kernels for model_type {model_type!r}")
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False)
