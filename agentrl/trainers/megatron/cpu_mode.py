"""CPU mode: Megatron-Core on a machine without CUDA (tests, CI, ``--device cpu`` runs).

Megatron-Core 0.16.1 has no CPU path: it allocates buffers with ``device="cuda"`` or
``torch.cuda.current_device()`` and checks ``Tensor.type()`` against CUDA type names. The model
itself (the local layer spec, fusions off, no dropout) computes the same on the CPU. Inside
:func:`cpu_mode` those call sites are pointed at the CPU, by the redirections of
:data:`REDIRECTIONS`:

``current_device``
    ``torch.cuda.current_device()`` returns the CPU device: rotary embedding ``inv_freq``, DDP
    gradient buffers (``param_and_grad_buffer.py``), tensor-parallel all-gather outputs
    (``tensor_parallel/mappings.py``), the optimizer's loss scale.
``device``
    ``device="cuda"`` in tensor factories becomes the CPU: ``schedules.py`` token counts,
    optimizer ``found_inf``/``_scale_one`` flags, ``clip_grads.py`` norms.
``type_names``
    ``Tensor.type()`` answers the CUDA type name of the tensor's dtype: the param type checks of
    ``Float16OptimizerWithFloat16Params`` and ``DistributedOptimizer``, ``clip_grads.py``'s assert.
``rng_state``
    ``torch.cuda.get_rng_state()`` returns the CPU generator's state: the model-parallel RNG
    tracker (``model_parallel_cuda_manual_seed``) snapshots it; nothing draws from it, since
    dropout is off (CUDA seeding itself is queued by torch and never runs on a CPU machine).
``synchronize``
    ``torch.cuda.synchronize()`` does nothing: ``dist_checkpointing``'s save.
``tensor_cuda``
    ``Tensor.cuda()`` returns the tensor: with pipeline parallelism and tied embeddings, the
    first and last stages move the shared weight to CUDA before summing it
    (``LanguageModule.setup_embeddings_and_output_layer``).

The redirection is active only inside the context manager, on the calling thread (the torch
function mode is thread-local; the patched ``torch.cuda`` functions are process-wide, but on a
machine without CUDA the originals raise anyway). It nests. ``tests/trainers/megatron/
test_cpu_mode.py`` checks that each redirection is still needed (a run without it fails) and that
together they are enough (a run with them works); a Megatron-Core upgrade that changes either
fails there first.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CUDA_TYPE_NAMES = {
    torch.float32: "torch.cuda.FloatTensor",
    torch.float16: "torch.cuda.HalfTensor",
    torch.bfloat16: "torch.cuda.BFloat16Tensor",
    torch.float64: "torch.cuda.DoubleTensor",
    torch.int64: "torch.cuda.LongTensor",
    torch.int32: "torch.cuda.IntTensor",
}
REDIRECTIONS: frozenset[str] = frozenset({"current_device", "device", "type_names", "rng_state", "synchronize", "tensor_cuda"})
"""The redirections in force (see the module docstring); tests switch single ones off."""


def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class _CudaToCpu(TorchFunctionMode):
    """The ``device``, ``type_names`` and ``tensor_cuda`` redirections."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs and "type_names" in REDIRECTIONS:
            return _CUDA_TYPE_NAMES.get(args[0].dtype, func(*args))
        if func is torch.Tensor.cuda and "tensor_cuda" in REDIRECTIONS:
            return args[0]
        if _is_cuda(kwargs.get("device")) and "device" in REDIRECTIONS:
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def _cpu_rng_state(device: object = None) -> torch.Tensor:
    return torch.get_rng_state()


def _nothing(device: object = None) -> None:
    return None


_PATCHES: tuple[tuple[str, Any, str, Callable[..., Any]], ...] = (
    ("current_device", torch.cuda, "current_device", _cpu_device),
    ("rng_state", torch.cuda, "get_rng_state", _cpu_rng_state),
    ("rng_state", torch.cuda.random, "get_rng_state", _cpu_rng_state),
    ("synchronize", torch.cuda, "synchronize", _nothing),
)
_lock = threading.Lock()
_depth = 0
_saved: list[tuple[Any, str, Any]] = []


@contextlib.contextmanager
def cpu_mode() -> Iterator[None]:
    """Run Megatron-Core calls on the CPU (see the module docstring). Re-entrant."""
    global _depth
    with _lock:
        if _depth == 0:
            _saved[:] = [(owner, name, getattr(owner, name)) for key, owner, name, _ in _PATCHES if key in REDIRECTIONS]
            for key, owner, name, replacement in _PATCHES:
                if key in REDIRECTIONS:
                    setattr(owner, name, replacement)
        _depth += 1
    try:
        with _CudaToCpu():
            yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for owner, name, original in _saved:
                    setattr(owner, name, original)
