"""Packed attention equals causal attention run on each sequence alone, values and gradients:
the padded-batch path everywhere, PyTorch's varlen flash kernel on CUDA."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from agentrl.trainers.packed_attention import attention_layout, cumulative_lengths, packed_attention, varlen_available

LENGTHS = [5, 17, 1, 33, 8]


def qkv(device: str, dtype: torch.dtype, heads: int = 4, kv_heads: int = 2, dim: int = 32):
    torch.manual_seed(0)
    total = sum(LENGTHS)
    return [torch.randn(1, h, total, dim, device=device, dtype=dtype, requires_grad=True) for h in (heads, kv_heads, kv_heads)]


def per_sequence_reference(q, k, v):
    outs, start = [], 0
    for length in LENGTHS:
        s = slice(start, start + length)
        outs.append(nn.functional.scaled_dot_product_attention(q[:, :, s], k[:, :, s], v[:, :, s], is_causal=True, enable_gqa=True))
        start += length
    return torch.cat(outs, dim=2).transpose(1, 2)  # [1, T, H, D]


def run(q, k, v):
    module = nn.Module().eval()
    cu = cumulative_lengths(LENGTHS, q.device)
    bounds = cu.tolist()
    layout = attention_layout(list(itertools.pairwise(bounds)), [(0, 0)] * len(LENGTHS)).to(q.device)
    out, _ = packed_attention(module, q, k, v, None, cu_seq_lens_q=cu, max_length_q=max(LENGTHS), attention_layout=layout)
    return out


def values_and_grads(fn, tensors):
    out = fn(*tensors)
    (out.float() * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    grads = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out.detach(), grads


def test_padded_path_equals_per_sequence_attention_on_cpu():
    tensors = qkv("cpu", torch.float32)
    out, grads = values_and_grads(run, tensors)
    ref, ref_grads = values_and_grads(per_sequence_reference, tensors)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_rejects_a_row_without_sequence_offsets():
    q, k, v = qkv("cpu", torch.float32)
    with pytest.raises(ValueError, match="attention_layout"):
        packed_attention(nn.Module(), q, k, v, None)


@pytest.mark.gpu
def test_varlen_flash_path_equals_per_sequence_attention_on_cuda_bf16():
    assert varlen_available(), "this PyTorch has no varlen_attn: the CUDA path would fall back to padding"
    tensors = qkv("cuda", torch.bfloat16)
    out, grads = values_and_grads(run, tensors)
    ref, ref_grads = values_and_grads(per_sequence_reference, tensors)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.float(), r.float(), atol=5e-2, rtol=5e-2)
