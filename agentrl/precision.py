"""``--bf16 auto``: whether a device computes in bf16 natively, and so whether bf16 pays there.

bf16 halves the memory of weights and activations and, where the hardware has bf16 arithmetic,
runs faster than fp32: CUDA GPUs from Ampere on, and CPUs with bf16 instructions (x86
AVX512-BF16 or AMX-BF16, ARM's BF16 extension) on which PyTorch's oneDNN kernels use them.
Elsewhere PyTorch emulates bf16 and is several times slower than in fp32 (SmolLM2-135M on a
2-core AMD EPYC with AVX2 only: prefill of 8 x 128 tokens 53.4 s in bf16, 15.2 s in fp32).

:func:`resolve_bf16` turns the setting (``True``, ``False`` or ``"auto"``) into a bool once,
when the config is read; nothing after that sees ``"auto"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

AUTO: Literal["auto"] = "auto"
"""The setting that lets :func:`resolve_bf16` decide from the device."""

NATIVE_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU features that compute in bf16: x86 AVX512-BF16 and AMX-BF16, ARM64 BF16 (names as in
``torch.cpu.get_capabilities()`` and the flags of ``/proc/cpuinfo``)."""

CPUINFO = Path("/proc/cpuinfo")
"""Where the CPU's features are read when torch has no ``torch.cpu.get_capabilities`` (Linux)."""


@dataclass(frozen=True)
class Bf16Choice:
    """What ``--bf16`` resolved to on a device.

    Attributes:
        enabled: bf16 weights in the engines and bf16 autocast in training; else fp32.
        reason: why, for the startup log line (e.g. "this CPU has no native bf16").
    """

    enabled: bool
    reason: str

    def describe(self) -> str:
        """The log line for ``--bf16 auto``, saying how to override it."""
        override = "--no-bf16 for fp32" if self.enabled else "--bf16 forces it"
        return f"bf16: auto -> {'on' if self.enabled else 'off'} ({self.reason}; {override})"


def resolve_bf16(setting: bool | str, device: str) -> Bf16Choice:
    """``--bf16``'s meaning on ``device``.

    Args:
        setting: ``True`` or ``False`` (kept as given) or ``"auto"``: bf16 where ``device``
            computes in bf16 natively.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (already checked to exist).

    Returns:
        The choice and its reason.

    Raises:
        ValueError: ``setting`` is none of ``True``, ``False``, ``"auto"``.
    """
    if isinstance(setting, bool):
        return Bf16Choice(setting, "set explicitly")
    if setting != AUTO:
        raise ValueError(f"expected true, false or auto, got {setting!r}")
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        if cuda_has_native_bf16(device):
            return Bf16Choice(True, f"{name} computes in bf16 natively")
        return Bf16Choice(False, f"{name} has no native bf16, which PyTorch would emulate")
    if cpu_has_native_bf16():
        return Bf16Choice(True, "this CPU computes in bf16 natively")
    return Bf16Choice(False, "this CPU has no native bf16, which PyTorch would emulate slower than fp32")


def cuda_has_native_bf16(device: str) -> bool:
    """Whether the CUDA ``device`` has bf16 arithmetic (emulation excluded)."""
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions and PyTorch's oneDNN kernels use them."""
    features = cpu_features()
    return any(features.get(name) for name in NATIVE_BF16_FEATURES) and onednn_has_bf16()


def onednn_has_bf16() -> bool:
    """Whether PyTorch's oneDNN runs bf16 on this CPU (``False`` in builds without oneDNN)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_features() -> Mapping[str, Any]:
    """This CPU's features by name: ``torch.cpu.get_capabilities()`` where torch has it (any
    OS), else the flags in :data:`CPUINFO` (Linux), else none."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        return capabilities()  # type: ignore[no-any-return]
    return dict.fromkeys(cpuinfo_flags(CPUINFO), True)


def cpuinfo_flags(path: Path) -> set[str]:
    """The first ``flags`` (x86) or ``Features`` (ARM) line of a ``/proc/cpuinfo`` file; empty
    where there is no such file."""
    try:
        text = path.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()
