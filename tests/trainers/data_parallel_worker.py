"""One rank of the data-parallel equality test (run by ``torch.distributed.run``).

Every rank builds the same eight sequences, keeps its share of the samples (re-indexed from 0,
as the trainer's callers do), accumulates one optimizer step's gradients and steps. Rank 0
saves the gradients and the updated weights to ``--out`` for the test to compare with a run of
one rank on the whole batch.

    python -m torch.distributed.run --nproc-per-node 2 tests/trainers/data_parallel_worker.py \\
        --model-dir DIR --out grads.pt --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random

import torch
import torch.distributed as dist

from agentrl.trainers.algorithms import LossConfig
from agentrl.trainers.batching import TrainSequence
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig

SAMPLES = 8


def make_sequences(vocab: int) -> list[TrainSequence]:
    rng = random.Random(0)
    out = []
    for i in range(SAMPLES):
        prompt, response = rng.randint(3, 12), rng.randint(2, 20)
        ids = [rng.randrange(vocab) for _ in range(prompt + response)]
        mask = [1 if rng.random() < 0.85 else 0 for _ in range(response)]
        logps = [-rng.random() * 3 for _ in range(response)]
        out.append(TrainSequence(ids, prompt, mask, logps, [rng.uniform(-1, 1)] * response, i))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--per-token", action="store_true")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    config = TrainerConfig(lr=1e-3, use_dynamic_batch_size=True, max_tokens_per_gpu=40,
                           bf16=args.bf16, calculate_per_token_loss=args.per_token)
    trainer = TorchTrainer(args.model_dir, config, LossConfig(), device=device)
    share = SAMPLES // world
    mine = [dataclasses.replace(s, sample_index=s.sample_index - rank * share)
            for s in make_sequences(trainer.model.config.vocab_size) if rank * share <= s.sample_index < (rank + 1) * share]
    metrics = trainer.accumulate_gradients(mine)
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.apply_gradients()
    if rank == 0:
        weights = {n: p.detach().float().cpu().clone() for n, p in trainer.model.named_parameters()}
        torch.save({"grads": grads, "weights": weights, "metrics": metrics}, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
