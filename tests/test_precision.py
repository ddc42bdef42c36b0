"""``--bf16 auto``: explicit settings win, auto follows the device's native bf16 (CPU probe
patched both ways; CUDA faked, since CI has no GPU), and the probe reads torch's CPU
capabilities or, without them, ``/proc/cpuinfo``."""

from __future__ import annotations

import pytest
import torch

from agentrl import precision
from agentrl.precision import Bf16Choice, cpu_features, cpu_has_native_bf16, cpuinfo_flags, resolve_bf16


def _no_probe() -> bool:
    raise AssertionError("an explicit setting must not probe the device")


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("setting", [True, False])
def test_an_explicit_setting_is_kept_without_probing(monkeypatch, native, setting):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", _no_probe)
    monkeypatch.setattr(precision, "cuda_has_native_bf16", lambda device: _no_probe())
    for device in ("cpu", "cuda:1"):
        assert resolve_bf16(setting, device) == Bf16Choice(setting, "set explicitly")


@pytest.mark.parametrize(("native", "line"), [
    (True, "bf16: auto -> on (this CPU computes in bf16 natively; --no-bf16 for fp32)"),
    (False, "bf16: auto -> off (this CPU has no native bf16, which PyTorch would emulate slower than fp32; --bf16 forces it)"),
])
def test_auto_on_a_cpu_follows_its_native_bf16(monkeypatch, native, line):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    choice = resolve_bf16("auto", "cpu")
    assert choice.enabled is native and choice.describe() == line


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_cuda_asks_that_device_and_not_the_cpu(monkeypatch, native):
    asked = []
    monkeypatch.setattr(precision, "cpu_has_native_bf16", _no_probe)
    monkeypatch.setattr(precision, "cuda_has_native_bf16", lambda device: asked.append(device) or native)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "GPU-X")
    choice = resolve_bf16("auto", "cuda:1")
    assert asked == ["cuda:1"] and choice.enabled is native
    assert choice.reason == ("GPU-X computes in bf16 natively" if native else "GPU-X has no native bf16, which PyTorch would emulate")


@pytest.mark.parametrize("setting", ["yes", "True", None, 1])
def test_other_settings_are_refused(setting):
    with pytest.raises(ValueError, match="expected true, false or auto, got"):
        resolve_bf16(setting, "cpu")


@pytest.mark.parametrize(("features", "onednn", "native"), [
    ({"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}, True, False),  # AMD EPYC Zen 2/3
    ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": False, "amx_bf16": False}, True, False),  # AVX-512 without BF16
    ({"architecture": "x86_64", "avx512_bf16": True, "amx_bf16": False}, True, True),  # Zen 4, Cooper Lake
    ({"architecture": "x86_64", "avx512_bf16": True, "amx_bf16": True}, True, True),  # Sapphire Rapids
    ({"architecture": "arm64", "bf16": True}, True, True),  # Graviton 3, Neoverse V1
    ({"architecture": "arm64", "bf16": True}, False, False),  # a torch build without oneDNN: bf16 runs emulated
    ({"architecture": "arm64", "neon": True}, True, False),
])
def test_the_cpu_probe_needs_bf16_instructions_and_onednn(monkeypatch, features, onednn, native):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: features, raising=False)
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: onednn)
    assert cpu_has_native_bf16() is native


def test_without_torch_cpu_capabilities_the_flags_of_proc_cpuinfo_are_read(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    monkeypatch.setattr(precision, "onednn_has_bf16", lambda: True)
    assert dict(cpu_features()) == {"fpu": True, "sse2": True, "avx2": True, "avx512_bf16": True} and cpu_has_native_bf16()
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")  # ARM64
    assert cpuinfo_flags(cpuinfo) == {"fp", "asimd", "bf16"}
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "absent")  # macOS, Windows: no such file, no native bf16 assumed
    assert dict(cpu_features()) == {} and not cpu_has_native_bf16()


def test_torch_and_proc_cpuinfo_agree_on_this_cpu():
    """The real probe on this machine: torch's capabilities say what the kernel's flags say."""
    flags = cpuinfo_flags(precision.CPUINFO)
    if not flags or not hasattr(torch.cpu, "get_capabilities"):
        pytest.skip("needs /proc/cpuinfo and torch.cpu.get_capabilities")
    from_proc = bool(flags & set(precision.NATIVE_BF16_FEATURES)) and precision.onednn_has_bf16()
    assert cpu_has_native_bf16() is from_proc
