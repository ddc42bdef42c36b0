"""Training throughput on a GPU: agentrl's two trainer backends against plain transformers + AdamW.

Model: a randomly initialised Qwen3-0.6B-shaped decoder (the point is speed, not learning).
Data: random token sequences of 300-2,000 tokens (``--lengths``; prompt 200) with random advantages, the same
for every contender. Contenders (``--backends``):

* ``torch``: agentrl's PyTorch backend: packed micro-batches of at most ``--max-tokens`` tokens
  (no padding, varlen flash attention), bf16 autocast over fp32 master weights, fused AdamW;
* ``torch+liger``: the same with ``--use-liger-kernel`` (liger-kernel's fused RMSNorm, SwiGLU, RoPE);
* ``torch+compile``: with ``--torch-compile`` (each decoder layer compiled; the warm-up step pays
  the compilation);
* ``megatron``: agentrl's Megatron-Core backend, same packing, bf16 parameters with fp32 masters
  in Megatron's optimizer (PyTorch AdamW: no Apex or Transformer Engine here);
  ``megatron+liger``: the same with liger-kernel's RMSNorm as every norm;
* ``hf``: plain transformers, the same sequences padded into batches of at most
  ``--baseline-max-tokens`` padded tokens, SDPA attention, full logits, bf16 autocast, torch AdamW.

MFU = (6 x parameters x tokens + causal attention FLOPs) / (step time x 989 TFLOP/s), tokens being
real (unpadded) tokens. Also reported: the mean absolute difference between each agentrl backend's
log-probs and the ``torch`` backend's on the same sequences before training (bf16). Prints a table
and, last, one JSON line.

    python bench/trainer_gpu.py [--backends torch torch+liger torch+compile megatron hf ...] [--steps 4] [--tokens-per-step 65536]
                                [--max-tokens 16384] [--profile]

``--profile`` adds, for each contender, a table of the CUDA kernels of one more step. A contender
that runs out of GPU memory is reported as such (``"error"`` in its result) and the others still run.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.batching import TrainSequence
from agentrl.trainers.build import build_trainer
from agentrl.trainers.packed_attention import varlen_available
from agentrl.trainers.torch_trainer import TrainerConfig

BACKENDS = ("torch", "torch+liger", "torch+compile", "megatron", "megatron+liger", "hf")
PEAK_BF16 = 989e12  # H100 SXM dense bf16
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)


def make_sequences(tokens: int, seed: int, min_len: int = 300, max_len: int = 2000) -> list[TrainSequence]:
    rng = random.Random(seed)
    out, total = [], 0
    while total < tokens:
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(1000, 150000) for _ in range(length)]
        n = length - 200
        out.append(TrainSequence(ids, 200, [1] * n, [-1.0] * n, [rng.choice([-1.0, 1.0])] * n, len(out)))
        total += length
    return out


def flops(params: int, sequences: list[TrainSequence], cfg: Qwen3Config) -> float:
    tokens = sum(len(s) for s in sequences)
    attention = sum(6 * cfg.num_hidden_layers * len(s) ** 2 * cfg.num_attention_heads * cfg.head_dim for s in sequences)
    return 6 * params * tokens + attention


def timed(fn) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def run_agentrl(backend: str, model_dir: str, batches: list[list[TrainSequence]], max_tokens: int, profile: bool = False) -> tuple[list[dict[str, float]], torch.Tensor]:
    """Steps of one agentrl backend, and its log-probs of the first batch before training."""
    cfg = TrainerConfig(bf16=True, lr=1e-6, use_dynamic_batch_size=True, max_tokens_per_gpu=max_tokens, use_liger_kernel="+liger" in backend,
                        torch_compile="+compile" in backend)
    trainer = build_trainer(backend.split("+")[0], model_dir, cfg, LossConfig(), device="cuda")
    try:
        logprobs = torch.cat(trainer.logprobs(batches[0]))
        rows = []
        for seqs in batches:
            fwd_bwd = timed(functools.partial(trainer.accumulate_gradients, seqs))
            opt = timed(trainer.apply_gradients)
            rows.append({"fwd_bwd_s": fwd_bwd, "optimizer_s": opt, "step_s": fwd_bwd + opt})
        if profile:
            print_profile(backend, functools.partial(trainer.accumulate_gradients, batches[-1]))
        return rows, logprobs
    finally:
        trainer.close()  # the Megatron backend's parallel state too, so the next contender can take it


def print_profile(name: str, fn) -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        timed(fn)
    print(f"--- {name}: kernels of one step's forward and backward, by CUDA time")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15), flush=True)


def run_plain(model_dir: str, batches: list[list[TrainSequence]], max_tokens: int, profile: bool = False) -> list[dict[str, float]]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rows = []
    for seqs in batches:
        def fwd_bwd(seqs: list[TrainSequence] = seqs) -> None:
            ordered = sorted(seqs, key=len)
            start = 0
            while start < len(ordered):  # padded micro-batches of at most max_tokens padded tokens
                end = start + 1
                while end < len(ordered) and (end + 1 - start) * len(ordered[end]) <= max_tokens:
                    end += 1
                group = ordered[start:end]
                width = len(group[-1])
                ids = torch.zeros(len(group), width, dtype=torch.long)
                attn = torch.zeros_like(ids)
                mask = torch.zeros(len(group), width - 1)
                adv = torch.zeros(len(group), width - 1)
                for i, s in enumerate(group):
                    ids[i, : len(s)] = torch.tensor(s.token_ids)
                    attn[i, : len(s)] = 1
                    mask[i, s.prompt_len - 1 : len(s) - 1] = 1
                    adv[i, s.prompt_len - 1 : len(s) - 1] = s.advantages[0]
                ids, attn, mask, adv = ids.cuda(), attn.cuda(), mask.cuda(), adv.cuda()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
                logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                loss = -(logp * adv * mask).sum() / mask.sum() * len(group) / len(seqs)
                loss.backward()
                start = end

        def step() -> None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        fb = timed(fwd_bwd)
        opt = timed(step)
        rows.append({"fwd_bwd_s": fb, "optimizer_s": opt, "step_s": fb + opt})
    if profile:
        print_profile("plain transformers", fwd_bwd)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, help="contenders, run in this order")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tokens-per-step", type=int, default=65536)
    parser.add_argument("--max-tokens", type=int, default=16384, help="agentrl's packed micro-batch size")
    parser.add_argument("--baseline-max-tokens", type=int, default=8192, help="padded tokens per baseline micro-batch (full logits)")
    parser.add_argument("--lengths", type=int, nargs=2, default=(300, 2000), metavar=("MIN", "MAX"), help="sequence lengths, uniform in [MIN, MAX]")
    parser.add_argument("--profile", action="store_true", help="print the CUDA kernels of one more step of each")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = Qwen3Config(**QWEN3_06B)
    results: dict[str, dict[str, float]] = {}
    logprobs: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(tmp)
        del model
        batches = [make_sequences(args.tokens_per_step, seed, *args.lengths) for seed in range(args.steps + 1)]  # the first step warms up
        for name in args.backends:
            torch.cuda.reset_peak_memory_stats()
            try:
                if name == "hf":
                    rows = run_plain(tmp, batches, args.baseline_max_tokens, args.profile)[1:]
                else:
                    all_rows, logprobs[name] = run_agentrl(name, tmp, batches, args.max_tokens, args.profile)
                    rows = all_rows[1:]
            except torch.OutOfMemoryError:
                results[name] = {"error": f"CUDA out of memory ({torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated at the peak)"}
            gc.collect()  # the contender's trainer (held by the traceback of an error until here)
            torch.cuda.empty_cache()
            if "error" in results.get(name, {}):
                print(f"{name:12s} {results[name]['error']}", flush=True)
                continue
            step_s = sum(r["step_s"] for r in rows) / len(rows)
            tokens = sum(sum(len(s) for s in b) for b in batches[1:]) / len(rows)
            mfu = sum(flops(params, b, cfg) for b in batches[1:]) / len(rows) / (step_s * PEAK_BF16)
            results[name] = {"step_s": step_s, "fwd_bwd_s": sum(r["fwd_bwd_s"] for r in rows) / len(rows),
                             "optimizer_s": sum(r["optimizer_s"] for r in rows) / len(rows), "tokens_per_s": tokens / step_s, "mfu": mfu,
                             "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
            if name in logprobs and "torch" in logprobs and name != "torch":
                results[name]["logprob_mean_abs_diff_vs_torch"] = float((logprobs[name] - logprobs["torch"]).abs().mean())
            print(f"{name:12s} step {step_s:.3f}s  fwd+bwd {results[name]['fwd_bwd_s']:.3f}s  optimizer {results[name]['optimizer_s']:.3f}s  "
                  f"{results[name]['tokens_per_s']:.0f} tok/s  MFU {mfu:.3f}  peak {results[name]['peak_gib']:.1f} GiB", flush=True)
    print(json.dumps({"bench": "trainer_gpu", "device": torch.cuda.get_device_name(), "torch": torch.__version__, "params": params,
                      "attention": "varlen flash" if varlen_available() else "padded SDPA", "tokens_per_step": args.tokens_per_step,
                      "lengths": list(args.lengths), "max_tokens": args.max_tokens, "baseline_max_tokens": args.baseline_max_tokens,
                      "results": results,
                      "speedup_vs_hf": {k: results["hf"]["step_s"] / v["step_s"] for k, v in results.items() if "step_s" in v} if "step_s" in results.get("hf", {}) else None}))


if __name__ == "__main__":
    main()
