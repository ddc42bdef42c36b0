"""A Ray job on one GPU: the trainer and an ``agentrl serve --device cuda`` engine colocated on
it (``--colocate``), weights by CUDA IPC (``/update_weights_from_tensor``), submitted with
``ray job submit`` to a head this script starts.

Model: a randomly initialised Qwen3-0.6B-shaped decoder (0.6 B parameters, bf16 on the wire) with
SmolLM2's tokenizer (``--tokenizer DIR``); the point is the step's time, not learning. Task: the
built-in math env on generated addition problems. Prints, per step, the step time and its parts
(rollout, train, weight sync) and, last, one JSON line.

    python bench/ray_gpu.py --tokenizer DIR [--steps 3] [--prompts 8] [--samples 8] [--max-tokens 256]

The ``ray`` command line is taken from ``--ray`` (default: ``ray`` on PATH), e.g. a
``python3 -m ...`` form where Ray is installed without its console script.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=40960, tie_word_embeddings=True)
REWARD = "async def reward(args, sample, **kw):\n    return float(sum(map(ord, sample.response)) % 7) / 6\n"
"""A reward with spread in every group (the random model earns nothing on the task), so every step trains."""
PARTS = ("perf/step_time_s", "perf/rollout_time_s", "perf/train_time_s", "perf/weight_sync_time_s")


def make_model(path: Path, tokenizer_dir: Path, layers: int) -> int:
    """The model directory; returns its parameter count."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen3Config(**{**QWEN3_06B, "num_hidden_layers": layers}, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--ray", default="ray", help="the ray command line")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to try the script out")
    parser.add_argument("--layers", type=int, default=QWEN3_06B["num_hidden_layers"], help="fewer only to try the script out")
    args = parser.parse_args()
    ray = shlex.split(args.ray)
    work = Path(tempfile.mkdtemp(prefix="ray_gpu_"))
    params = make_model(work / "model", args.tokenizer, args.layers)
    tasks = work / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"input": f"What is {i} + {2 * i + 7}?", "label": str(3 * i + 7)}) + "\n" for i in range(256)))
    (work / "bench_reward.py").write_text(REWARD)
    out = work / "run"
    os.environ["PYTHONPATH"] = f"{work}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # the job inherits ray start's environment
    gpus = ["--num-gpus", "1"] if args.device == "cuda" else []
    subprocess.run([*ray, "start", "--head", *gpus, "--num-cpus", "8", "--disable-usage-stats", "--dashboard-host", "127.0.0.1"],
                   check=True, timeout=300)
    try:
        started = time.perf_counter()
        job = subprocess.run([*ray, "job", "submit", "--address", "http://127.0.0.1:8265", "--", sys.executable, "-m", "agentrl.train",
                              "--device", args.device, "--colocate", "--actor-num-gpus-per-node", "1", "--hf-checkpoint", str(work / "model"),
                              "--prompt-data", str(tasks), "--output-dir", str(out), "--num-rollout", str(args.steps),
                              "--rollout-batch-size", str(args.prompts), "--n-samples-per-prompt", str(args.samples),
                              "--rollout-max-response-len", str(args.max_tokens), "--use-dynamic-batch-size", "--max-tokens-per-gpu", "16384",
                              "--lr", "1e-6", "--rollout-temperature", "1.0", "--custom-rm-path", "bench_reward.reward"], timeout=3000)
        wall = time.perf_counter() - started
    finally:
        subprocess.run([*ray, "stop", "--force"], timeout=300)
    if job.returncode != 0:
        raise SystemExit(f"the job failed ({job.returncode})")
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "perf/step_time_s" in r]
    for r in rows:
        print(f"step {r['step']}: " + ", ".join(f"{k.split('/')[-1]} {r[k]:.3f}" for k in PARTS if k in r))
    syncs = [r["perf/weight_sync_time_s"] for r in rows if "perf/weight_sync_time_s" in r]
    print(json.dumps({"bench": "ray_gpu_colocated", "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                      "parameters": params, "steps": [{k: r.get(k) for k in ("step", *PARTS)} for r in rows],
                      "weight_sync_s_median": statistics.median(syncs) if syncs else None,
                      "weight_sync_s_after_first": statistics.median(syncs[1:]) if len(syncs) > 1 else None,
                      "job_wall_s": round(wall, 1), "goal_weight_sync_s": 0.2}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
