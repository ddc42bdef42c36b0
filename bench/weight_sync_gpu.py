"""Weight sync from a trainer to ``agentrl serve`` on GPUs: throughput of disk and NCCL pushes.

Model: a randomly initialised Qwen3-0.6B-shaped decoder (``--shape tiny`` for a smoke run) with
a synthetic word-level tokenizer (the GPU machines have no model hub). Trainer: this process,
fp32 master weights on ``cuda:0``, sent as ``--wire-dtype`` (bf16 by default; tied embeddings
once). Engine: an ``agentrl serve --device cuda`` subprocess, on the second GPU when there are
two (NCCL refuses two ranks on one GPU), else on the same GPU, where the group transport is
gloo (through the CPU) instead of NCCL.

Each push perturbs the weights, pushes them (pause, flush, transfer, continue, version check:
the whole push is timed), then samples 8 tokens from the engine and compares the log-probs it
reports with the trainer's own forward pass on the pushed weights (``max_logprob_diff``) and on
the weights before the push (``logprob_diff_vs_previous``, which must be far larger).
GB/s = tensor bytes on the wire / push time. Prints a table and, last, one JSON line; exits 1 if
``--max-logprob-diff`` is given and exceeded.

    python bench/weight_sync_gpu.py [--shape qwen3-0.6b] [--pushes 3] [--bucket-mb 512] [--transports disk,nccl]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen3Config

from agentrl.engines.weight_sync import (
    DiskWeightSync,
    DistributedWeightSync,
    HTTPWeightSync,
    TensorWeightSync,
)

SHAPES = {
    "qwen3-0.6b": {"vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128},
    "tiny": {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16},
}
PROMPT = [5, 17, 300, 42, 7, 900]
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def build_model_dir(shape: str, path: Path) -> Qwen3Config:
    """A random model of ``shape`` saved in bf16, with a tokenizer of ``t<i>`` words."""
    config = Qwen3Config(**SHAPES[shape], max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(path)
    vocab = {"<unk>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, config.vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>").save_pretrained(path)
    return config


@contextlib.contextmanager
def served(model_dir: Path, gpu: int, dtype: str) -> Iterator[str]:
    """``agentrl serve`` on GPU ``gpu``; yields its URL, stops it with SIGTERM."""
    env = os.environ | {"CUDA_VISIBLE_DEVICES": str(gpu)}
    cmd = [sys.executable, "-m", "agentrl.cli", "serve", "--model-path", str(model_dir), "--device", "cuda", "--dtype", dtype, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    try:
        while select.select([proc.stdout], [], [], 600)[0]:
            line = proc.stdout.readline().decode()
            if " ready at http://" in line:
                yield line.rsplit(" ", 1)[1].strip()
                break
            if not line:
                raise RuntimeError(f"agentrl serve exited with {proc.wait()}")
        else:
            raise RuntimeError("agentrl serve did not get ready in 600 s")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)


def perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype) * 0.02)


def local_logprobs(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    ids = torch.tensor([PROMPT + tokens], device="cuda")
    with torch.no_grad():
        logits = model(ids).logits[0, len(PROMPT) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens, device="cuda")[:, None])[:, 0].cpu()


async def served_logprobs(url: str) -> tuple[list[int], torch.Tensor]:
    body = {"input_ids": PROMPT, "return_logprob": True, "sampling_params": {"max_new_tokens": 8, "temperature": 1.0, "sampling_seed": 1}}
    async with aiohttp.ClientSession() as http, http.post(url + "/generate", json=body) as r:
        out = await r.json()
    return out["output_ids"], torch.tensor([lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]])


async def run_pushes(sync: HTTPWeightSync, model: torch.nn.Module, previous: torch.nn.Module, url: str, pushes: int,
                     first_version: int) -> list[dict[str, float]]:
    rows = []
    for k in range(pushes):
        previous.load_state_dict(model.state_dict())
        perturb(model, seed=first_version + k)
        await sync.push(model.state_dict().items(), weight_version=first_version + k)
        stats = sync.last_push
        tokens, served = await served_logprobs(url)
        rows.append({"seconds": stats.seconds, "gb": stats.bytes / 1e9, "gb_per_s": stats.gb_per_s, "buckets": stats.buckets,
                     "prepare_s": stats.prepare_s, "quiesce_s": stats.quiesce_s, "transfer_s": stats.transfer_s, "resume_s": stats.resume_s,
                     "max_logprob_diff": float((served - local_logprobs(model, tokens)).abs().max()),
                     "logprob_diff_vs_previous": float((served - local_logprobs(previous, tokens)).abs().max())})
    return rows


def make_sync(transport: str, url: str, args: argparse.Namespace, workdir: Path) -> HTTPWeightSync:
    if transport == "disk":
        return DiskWeightSync([url], workdir / "pushed", dtype=DTYPES[args.wire_dtype])
    if transport == "tensor":  # CUDA IPC to an engine on this node (--colocate)
        return TensorWeightSync([url], device="cuda", bucket_bytes=args.bucket_mb * 2**20, dtype=DTYPES[args.wire_dtype])
    return DistributedWeightSync([url], backend=transport, bucket_bytes=args.bucket_mb * 2**20, dtype=DTYPES[args.wire_dtype])


async def bench(args: argparse.Namespace, model_dir: Path, engine_gpu: int, transports: list[str]) -> dict[str, dict]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to("cuda").eval()
    previous = copy.deepcopy(model)  # the weights before each push
    results = {}
    with served(model_dir, engine_gpu, args.engine_dtype) as url:
        for i, transport in enumerate(transports):
            async with make_sync(transport, url, args, model_dir.parent) as sync:
                rows = await run_pushes(sync, model, previous, url, args.pushes, first_version=1 + i * args.pushes)
            results[transport] = {"gb_per_s_median": statistics.median(r["gb_per_s"] for r in rows),
                                  "seconds_median": statistics.median(r["seconds"] for r in rows), "gb_per_push": rows[0]["gb"],
                                  "buckets": rows[0]["buckets"], "max_logprob_diff": max(r["max_logprob_diff"] for r in rows),
                                  "min_logprob_diff_vs_previous": min(r["logprob_diff_vs_previous"] for r in rows), "pushes": rows}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=SHAPES, default="qwen3-0.6b")
    parser.add_argument("--pushes", type=int, default=3)
    parser.add_argument("--bucket-mb", type=int, default=512)
    parser.add_argument("--wire-dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--engine-dtype", choices=DTYPES, default="bfloat16")
    parser.add_argument("--transports", default=None, help="comma-separated of disk, nccl, gloo, tensor (CUDA IPC; default: disk and nccl, or gloo on one GPU)")
    parser.add_argument("--max-logprob-diff", type=float, default=None, help="exit 1 if the engine's log-probs differ more")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    engine_gpu = 1 if gpus >= 2 else 0
    transports = args.transports.split(",") if args.transports else ["disk", "nccl" if gpus >= 2 else "gloo"]
    with tempfile.TemporaryDirectory() as tmp:
        config = build_model_dir(args.shape, Path(tmp) / "model")
        params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        results = asyncio.run(bench(args, Path(tmp) / "model", engine_gpu, transports))
    print(f"{'transport':<10}{'GB/push':>10}{'s/push':>10}{'GB/s':>10}{'buckets':>9}{'logprob diff':>14}{'vs previous':>13}")
    for name, r in results.items():
        print(f"{name:<10}{r['gb_per_push']:>10.3f}{r['seconds_median']:>10.3f}{r['gb_per_s_median']:>10.2f}{r['buckets']:>9}"
              f"{r['max_logprob_diff']:>14.2e}{r['min_logprob_diff_vs_previous']:>13.2e}")
    print(json.dumps({"bench": "weight_sync_gpu", "device": torch.cuda.get_device_name(), "gpus": gpus, "engine_gpu": engine_gpu,
                      "torch": torch.__version__, "shape": args.shape, "params": params, "wire_dtype": args.wire_dtype,
                      "engine_dtype": args.engine_dtype, "results": results}))
    if args.max_logprob_diff is not None and any(r["max_logprob_diff"] > args.max_logprob_diff for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
