"""The lean forward against Hugging Face's own forward, on the real SmolLM2 and on tiny random
models of every supported architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

from agentrl.errors import ModelError, PolicyError
from agentrl.policies.decoder import ARCHITECTURES, KVCache, LeanDecoder

ATOL = 1e-4  # fp32 logits
BF16_ATOL = 0.02  # tiny models' logits are ~1 in magnitude; bf16 keeps ~3 significant digits
RTOL_BATCHED = 1e-5
"""Batching changes how the BLAS splits the sums: HF's own forward of a row alone and inside a
padded batch differ by up to ~1.1e-4 on SmolLM2's logits (|logit| ~ 30), so batched rows also
get a relative term; a row decoded alone matches HF's cached decode within ATOL (bit for bit
here)."""
TINY = {
    "vocab_size": 256, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3,
    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
}
TINY_CONFIGS = {
    "llama": LlamaConfig(**TINY),
    "llama-biases": LlamaConfig(**TINY, attention_bias=True, mlp_bias=True),
    "qwen2-sliding": Qwen2Config(**TINY, use_sliding_window=True, sliding_window=6, max_window_layers=1),
    "qwen3": Qwen3Config(**TINY, head_dim=24),
    "mistral-sliding": MistralConfig(**TINY, sliding_window=5),
}


def _tiny_model(config: PretrainedConfig) -> PreTrainedModel:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # larger weights than the default init, so that errors would show
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def smollm2(smollm2_dir) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()


def assert_matches_hf(
    model: PreTrainedModel, lengths: list[int], decode_steps: int, *, atol: float = ATOL,
    rtol: float = 0.0, decoder: LeanDecoder | None = None, shared: int = 0,
) -> None:
    """Prefill right-padded prompts (the first ``shared`` tokens common to all and computed
    once), decode a few tokens, and compare every logits row with HF's forward over the same
    tokens."""
    vocab = model.config.vocab_size
    torch.manual_seed(1)
    prefix = torch.randint(0, vocab, (shared,))
    prompts = [torch.cat([prefix, torch.randint(0, vocab, (n - shared,))]) for n in lengths]
    fed = torch.randint(0, vocab, (len(lengths), decode_steps))
    decoder = decoder or LeanDecoder(model)
    cache = decoder.new_cache()
    width = max(lengths) - shared
    padded = torch.zeros((len(lengths), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        padded[i, : len(p) - shared] = p[shared:]
    with torch.inference_mode():
        cache.reserve(len(lengths), max(lengths) + decode_steps)
        if shared:
            decoder.share_prefix(cache, prefix, range(len(lengths)))
        got = [decoder.prefill(cache, padded, torch.tensor(lengths) - shared, 0, start=shared)]
        positions = torch.tensor(lengths)
        for step in range(decode_steps):
            got.append(decoder.decode(cache, fed[:, step], positions + step))
        for i, prompt in enumerate(prompts):
            tokens = torch.cat([prompt, fed[i]])[None]
            want = model(tokens).logits[0, len(prompt) - 1 :].float()
            lean = torch.stack([g[i] for g in got])
            torch.testing.assert_close(lean, want, atol=atol, rtol=rtol)


def test_smollm2_logits_match_hf_for_a_single_row(smollm2):
    assert_matches_hf(smollm2, lengths=[19], decode_steps=4)


def test_smollm2_single_row_decode_reproduces_hf_cached_decode_exactly(smollm2):
    """Same ops in the same order as HF's modules: a row decoded alone gets bit-for-bit HF's
    logits in fp32 (if a transformers upgrade breaks this, HF changed its op order; the 1e-4
    tests still bound the difference)."""
    torch.manual_seed(2)
    prompt, fed = torch.randint(0, 49152, (1, 12)), torch.randint(0, 49152, (3,))
    decoder = LeanDecoder(smollm2)
    cache = decoder.new_cache()
    with torch.inference_mode():
        cache.reserve(1, 16)
        lean_prefill = decoder.prefill(cache, prompt, torch.tensor([12]), 0)
        out = smollm2(prompt, use_cache=True)
        torch.testing.assert_close(lean_prefill, out.logits[:, -1], atol=ATOL, rtol=0)
        for step, token in enumerate(fed):
            lean = decoder.decode(cache, token[None], torch.tensor([12 + step]))
            out = smollm2(token[None, None], cache=out.cache, use_cache=True)
            assert torch.equal(lean, out.logits[:, -1])


def test_smollm2_logits_match_hf_in_a_batch_of_different_lengths(smollm2):
    assert_matches_hf(smollm2, lengths=[23, 9, 16], decode_steps=4, rtol=RTOL_BATCHED)


def test_smollm2_logits_match_hf_after_a_shared_prefix(smollm2):
    assert_matches_hf(smollm2, lengths=[23, 9, 16], decode_steps=2, rtol=RTOL_BATCHED, shared=7)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
@pytest.mark.parametrize("shared", [0, 4])
def test_tiny_architectures_match_hf(name, shared):
    assert_matches_hf(_tiny_model(TINY_CONFIGS[name]), lengths=[14, 9], decode_steps=5, shared=shared)


@pytest.mark.parametrize("name", ["llama-biases", "qwen3"])
def test_tiny_architectures_match_hf_in_bfloat16(name):
    """bf16 (packed weights on CPU) against HF's bf16 forward: same ops, bf16 rounding."""
    model = _tiny_model(TINY_CONFIGS[name]).to(torch.bfloat16)
    assert_matches_hf(model, lengths=[14, 9], decode_steps=3, atol=BF16_ATOL)


def test_table_covers_the_tested_architectures():
    assert {c.model_type for c in TINY_CONFIGS.values()} == set(ARCHITECTURES)


def test_unsupported_architecture_names_the_supported_ones():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ModelError, match=r"model_type 'gpt2'.*supported: \['llama', 'mistral'"):
        LeanDecoder(model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_weights_changes_what_the_decoder_computes(dtype):
    model = _tiny_model(TINY_CONFIGS["llama"]).to(dtype)
    decoder = LeanDecoder(model)
    assert decoder.packed == (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())  # packed copies where oneDNN has bf16
    name = "model.layers.1.mlp.up_proj.weight"
    assert decoder.load_weights([(name, torch.full_like(model.get_parameter(name), 0.1))]) == 1
    assert_matches_hf(model, lengths=[7], decode_steps=2, atol=ATOL if dtype == torch.float32 else BF16_ATOL, decoder=decoder)


@pytest.mark.parametrize(
    ("name", "shape", "message"),
    [
        ("model.layers.0.attn.q.weight", (4, 4), "unknown parameter 'model.layers.0.attn.q.weight'"),
        ("model.norm.weight", (3,), r"model.norm.weight has shape \(64,\), got \(3,\)"),
    ],
)
def test_load_weights_rejects_unknown_names_and_shapes(name, shape, message):
    decoder = LeanDecoder(_tiny_model(TINY_CONFIGS["llama"]))
    with pytest.raises(PolicyError, match=message):
        decoder.load_weights([(name, torch.zeros(shape))])


def test_kv_cache_grows_geometrically_and_keeps_what_it_stores():
    """Grown a few positions at a time, as decoding does, the cache reallocates O(log n) times
    (CUDA's caching allocator keeps each outgrown block), and every grow keeps the stored values."""
    cache = KVCache(2, 1, 4, dtype=torch.float32, device=torch.device("cpu"))
    cache.reserve(3, 5)
    cache.data[:, :, :3, :, :5] = torch.arange(2 * 2 * 3 * 5 * 4, dtype=torch.float32).view(2, 2, 3, 1, 5, 4)
    stored = cache.data[:, :, :3, :, :5].clone()
    capacities = {cache.capacity}
    for length in range(6, 20_000, 7):
        cache.reserve(3, length)
        capacities.add(cache.capacity)
    assert cache.capacity >= 20_000 - 7
    assert len(capacities) <= 12  # 256 -> 20k by 1.5x: 12 sizes; by 256-position chunks it was 78
    assert torch.equal(cache.data[:, :, :3, :, :5], stored)
    slots = {cache.slots}
    for rows in range(4, 1000):
        cache.reserve(rows, 1)
        slots.add(cache.slots)
    assert cache.slots >= 999 and len(slots) <= 14
    assert torch.equal(cache.data[:, :, :3, :, :5], stored)
