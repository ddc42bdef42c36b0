"""agentrl against TRL's GRPOTrainer: seconds per optimizer step and reward per step.

Same model (SmolLM2-135M-Instruct), task (the math example's prompts, instruction and reward:
1 for a correct boxed answer, 0.1 for a wrong boxed number, by Math-Verify), prompts per step, samples per prompt, response length, temperature, learning rate, loss
(per-sample mean, no KL), numeric precision and machine; each configuration runs in its own
subprocess, one after the other. Also reports agentrl's achieved training FLOP/s against the
machine's measured bf16 matrix-multiply rate.

    python bench/vs_trl.py [--steps 3] [--precisions bf16 fp32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, SAMPLES, NEW_TOKENS, TEMPERATURE, LR = 8, 8, 40, 1.0, 1e-6
INSTRUCTION = "Write the final answer as \\boxed{ANSWER}, where ANSWER is the number."  # the math example's
FORMAT_REWARD = 0.1


def make_data(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "examples" / "math"))
    from make_data import make_problems

    rows = make_problems(seed=7, count=PROMPTS * 50)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_agentrl(data: Path, steps: int, bf16: bool, out: Path) -> dict:
    from agentrl.config import load_config
    from agentrl.train import train

    config = out / "env.yaml"
    config.write_text(json.dumps({"env-kwargs": {"instruction": INSTRUCTION, "format_reward": FORMAT_REWARD}}))  # JSON is YAML
    cfg = load_config([
        "--config", str(config), "--prompt-data", str(data), "--num-rollout", str(steps + 1), "--rollout-batch-size", str(PROMPTS),
        "--n-samples-per-prompt", str(SAMPLES), "--rollout-max-response-len", str(NEW_TOKENS),
        "--rollout-temperature", str(TEMPERATURE), "--lr", str(LR), "--output-dir", str(out),
        "--use-dynamic-batch-size", "--max-tokens-per-gpu", "8192", "--bf16" if bf16 else "--no-bf16",
    ])
    train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timed = records[1:]  # the first step warms up (thread pools, allocator)
    params = 134_515_008
    trained = [r.get("perf/train_tokens_per_s", 0) for r in timed]
    return {
        "seconds_per_step": sum(r["perf/step_time_s"] for r in timed) / len(timed),
        "rollout_s": sum(r["perf/rollout_time_s"] for r in timed) / len(timed),
        "train_s": sum(r["perf/train_time_s"] for r in timed) / len(timed),
        "reward_per_step": [r["rollout/reward_mean"] for r in records],
        "train_flops_per_s": 6 * params * sum(trained) / len(trained),
    }


def run_trl(data: Path, steps: int, bf16: bool, out: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agentrl.models.resolve import resolve_model
    from agentrl.rewards import score_math_answer

    rows = [json.loads(line) for line in data.read_text().splitlines()][: PROMPTS * (steps + 1)]
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": f"{r['input']}\n{INSTRUCTION}"}], "label": r["label"]} for r in rows])

    def reward(completions, label, **_):  # MathEnv's reward with format_reward=FORMAT_REWARD
        scores = [score_math_answer(c[0]["content"], y) for c, y in zip(completions, label)]
        return [s.reward or (FORMAT_REWARD if s.format_ok else 0.0) for s in scores]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *args, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            self.times.append(time.perf_counter() - self.started)

    timer = StepTimer()
    args = GRPOConfig(
        output_dir=str(out), use_cpu=True, bf16=bf16, max_steps=steps + 1, learning_rate=LR, beta=0.0, loss_type="grpo",
        per_device_train_batch_size=PROMPTS * SAMPLES, num_generations=SAMPLES, max_completion_length=NEW_TOKENS,
        temperature=TEMPERATURE, activation_checkpointing=False, logging_steps=1, report_to="none", save_strategy="no",
        shuffle_dataset=False,
    )
    trainer = GRPOTrainer(model=str(resolve_model("smollm2-135m")), reward_funcs=reward, args=args, train_dataset=dataset, callbacks=[timer])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    timed = timer.times[1:]
    return {"seconds_per_step": sum(timed) / len(timed), "reward_per_step": rewards}


def bf16_matmul_rate() -> float:
    a, b = torch.randn(2048, 2048, dtype=torch.bfloat16), torch.randn(2048, 2048, dtype=torch.bfloat16)
    a @ b
    started, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    return 2 * 2048**3 * reps / (time.perf_counter() - started)


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), platform.machine())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up step)")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--worker", nargs=3, metavar=("FRAMEWORK", "PRECISION", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        framework, precision, data = args.worker
        with tempfile.TemporaryDirectory() as tmp:
            run = run_agentrl if framework == "agentrl" else run_trl
            print("RESULT " + json.dumps(run(Path(data), args.steps, precision == "bf16", Path(tmp))), flush=True)
        return
    shared = {"model": "SmolLM2-135M-Instruct", "task": "examples/math arithmetic, its instruction, reward 1 correct / 0.1 boxed number", "prompts_per_step": PROMPTS,
              "samples_per_prompt": SAMPLES, "max_new_tokens": NEW_TOKENS, "temperature": TEMPERATURE, "lr": LR, "loss": "per-sample mean (TRL loss_type=grpo), no KL"}
    print("configuration:", json.dumps(shared))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "tasks.jsonl")
        for precision in args.precisions:
            for framework in ("agentrl", "trl"):
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--worker", framework, precision, str(data)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{framework} {precision} failed:\n{proc.stderr[-3000:]}")
                results[f"{framework}_{precision}"] = json.loads(line[len("RESULT "):])
                print(f"{framework:8s} {precision}: {results[f'{framework}_{precision}']['seconds_per_step']:.1f} s/step", flush=True)
    matmul = bf16_matmul_rate()
    summary = {"bench": "vs_trl", "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__}, "config": shared,
               "steps_timed": args.steps, "results": results, "bf16_matmul_flops_per_s": matmul}
    for precision in args.precisions:
        ours, theirs = results[f"agentrl_{precision}"], results[f"trl_{precision}"]
        summary[f"time_ratio_agentrl_over_trl_{precision}"] = ours["seconds_per_step"] / theirs["seconds_per_step"]
        summary[f"agentrl_train_flops_fraction_of_matmul_{precision}"] = ours["train_flops_per_s"] / matmul
        print(f"{precision}: agentrl {ours['seconds_per_step']:.1f} s/step vs TRL {theirs['seconds_per_step']:.1f} s/step "
              f"-> {summary[f'time_ratio_agentrl_over_trl_{precision}']:.2f}x the time; rewards agentrl {ours['reward_per_step']} TRL {theirs['reward_per_step']}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
