"""Throughput of the embedded engine against one batched Hugging Face ``generate`` call.

Workload: 32 chat prompts (SmolLM2's chat template over 32 different short questions), 64 new
tokens each, sampled at temperature 1.0 / top-p 1.0 / no top-k, in fp32 and in bf16. Tokens are
counted per row up to and including its first eos. Contenders, each in a fresh process (a warm-up
run, then ``--runs`` timed runs; the median counts):

* ``hf_generate``: ``model.generate`` over the 32 left-padded prompts in one call;
* ``engine``: :class:`agentrl.policies.embedded.EmbeddedEngine` serving the same 32 requests
  concurrently (``asyncio.gather`` of 32 ``generate`` calls);
* ``vllm``: only if it is installed (its wheels pin their own, CUDA, torch build, so it is not
  installed here on purpose).

Run: ``python bench/embedded_generate.py``. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
import transformers

MODEL = "smollm2-135m"
NEW_TOKENS = 64
EOS = 2  # SmolLM2's <|im_end|>
QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "Why is the sky blue?",
    "Name three primary colors.", "What is 12 times 12?", "Who wrote Romeo and Juliet?",
    "What is photosynthesis?", "How far is the Moon from Earth?", "What is a prime number?",
    "Give me a synonym for happy.", "What does DNA stand for?", "How do airplanes fly?",
    "What is the boiling point of water?", "Name a famous painting.", "What is gravity?",
    "How many continents are there?", "What is the largest ocean?", "Explain what a verb is.",
    "What causes rain?", "What is the speed of light?", "Name two kinds of trees.",
    "What is an atom?", "How does a compass work?", "What is the tallest mountain?",
    "Why do we need sleep?", "What is a haiku?", "How many days are in a leap year?",
    "What is the opposite of cold?", "What language is spoken in Brazil?", "What is a black hole?",
    "Suggest a name for a cat.", "What is the square root of 81?",
]


def prompts(tokenizer: transformers.PreTrainedTokenizerBase) -> list[list[int]]:
    """The 32 chat prompts as token ids."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)["input_ids"]
        for q in QUESTIONS
    ]


def count_tokens(rows: list[list[int]]) -> int:
    """Generated tokens per row up to and including the first eos, summed."""
    return sum(row.index(EOS) + 1 if EOS in row else len(row) for row in rows)


def run_hf(dtype: str, runs: int) -> list[tuple[int, float]]:
    """(tokens, seconds) of each timed ``model.generate`` call."""
    from agentrl.models.resolve import resolve_model

    path = resolve_model(MODEL)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, padding_side="left")
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    batch = tokenizer.pad({"input_ids": prompts(tokenizer)}, return_tensors="pt")
    settings = {
        "max_new_tokens": NEW_TOKENS, "do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
        "pad_token_id": EOS,
    }
    results = []
    for run in range(runs + 1):  # the first is the warm-up
        torch.manual_seed(run)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**batch, **settings)
        elapsed = time.perf_counter() - started
        results.append((count_tokens(out[:, batch["input_ids"].shape[1] :].tolist()), elapsed))
    return results[1:]


def run_engine(dtype: str, runs: int) -> list[tuple[int, float]]:
    """(tokens, seconds) of each timed round of 32 concurrent engine requests."""
    from agentrl.policies.base import SamplingParams
    from agentrl.policies.embedded import EmbeddedEngine

    async def rounds() -> list[tuple[int, float]]:
        results = []
        async with EmbeddedEngine.from_pretrained(MODEL, dtype=dtype, seed=0) as engine:
            ids = prompts(engine.tokenizer)
            for run in range(runs + 1):  # the first is the warm-up
                sampling = [
                    SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1.0, seed=run * 100 + i)
                    for i in range(len(ids))
                ]
                started = time.perf_counter()
                outs = await asyncio.gather(*(engine.generate(p, s) for p, s in zip(ids, sampling)))
                elapsed = time.perf_counter() - started
                results.append((count_tokens([o.token_ids for o in outs]), elapsed))
        return results[1:]

    return asyncio.run(rounds())


CONTENDERS = {"hf_generate": run_hf, "engine": run_engine}


def measure(contender: str, dtype: str, runs: int) -> dict[str, float]:
    """Run one contender in a fresh process; its tokens/s summary."""
    cmd = [sys.executable, __file__, "--worker", contender, "--dtype", dtype, "--runs", str(runs)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{contender} ({dtype}) failed:\n{done.stderr[-3000:]}")
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    rates = [tokens / seconds for tokens, seconds in timings]
    return {
        "tok_s": statistics.median(rates),
        "tok_s_runs": [round(r, 1) for r in rates],
        "tokens": statistics.median(t for t, _ in timings),
        "seconds": statistics.median(s for _, s in timings),
    }


def machine() -> dict[str, object]:
    with open("/proc/cpuinfo") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per contender (after a warm-up)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # inside a fresh process: print the timings as JSON
        print(json.dumps(CONTENDERS[args.worker](args.dtype, args.runs)))
        return
    info = machine()
    results: dict[str, dict[str, object]] = {}
    for dtype in args.dtypes.split(","):
        hf = measure("hf_generate", dtype, args.runs)
        engine = measure("engine", dtype, args.runs)
        results[dtype] = {"hf_generate": hf, "engine": engine, "ratio": engine["tok_s"] / hf["tok_s"]}
    vllm = "installed but not benchmarked" if importlib.util.find_spec("vllm") else "not installed"
    print_table(results)
    print(json.dumps({
        "bench": "embedded_generate",
        "workload": {"prompts": len(QUESTIONS), "new_tokens": NEW_TOKENS, "temperature": 1.0, "top_p": 1.0,
                     "model": MODEL, "runs": args.runs},
        "results": results,
        "vllm": vllm,
        "machine": info,
    }))


def print_table(results: dict[str, dict[str, object]]) -> None:
    print(f"{'dtype':<10}{'contender':<14}{'tok/s (median)':>16}{'tokens':>8}{'seconds':>9}   runs")
    for dtype, row in results.items():
        for name in ("hf_generate", "engine"):
            r = row[name]
            print(f"{dtype:<10}{name:<14}{r['tok_s']:>16.1f}{r['tokens']:>8.0f}{r['seconds']:>9.2f}   {r['tok_s_runs']}")
        print(f"{dtype:<10}{'engine / hf':<14}{row['ratio']:>16.2f}x")


if __name__ == "__main__":
    main()
