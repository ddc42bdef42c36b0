"""One rank of the Megatron parallel-equality tests (run by ``torch.distributed.run``, gloo, CPU).

For each mode of :data:`MODES` (the processes stay up; Megatron's groups are rebuilt per mode)
every rank builds a :class:`MegatronTrainer` with the mode's parallel sizes, exports its weights
(the HF round trip at these sizes), takes the log-probs of every sequence, and trains one
step's gradients and then a rollout of two optimizer steps on its data-parallel share (samples
re-indexed from 0, each local step holding its part of the global step, as a launcher must deal
them). Rank 0 saves what it saw to ``--out/<mode>.pt``; the ``tp`` mode also
writes a checkpoint to ``--out/tp_checkpoint``. Last, :func:`pp_without_tensor_cuda` checks one
CPU-mode redirection that only a pipeline needs.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/trainers/megatron/parallel_worker.py \\
        --model-dirs '{"qwen3": DIR, ...}' --out DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository, for tests.*

from agentrl.trainers.megatron import cpu_mode
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.trainer import MegatronTrainer
from tests.trainers.megatron.megatron_cases import CONFIG, LOSS, data_parallel_share, make_sequences, megatron_grads

SAMPLES = 8
MODES: dict[str, tuple[str, MegatronConfig]] = {
    "dp": ("qwen3", MegatronConfig()),
    "dp_distributed_optimizer": ("qwen3", MegatronConfig(use_distributed_optimizer=True)),
    "dp_overlap_grad_reduce": ("qwen3", MegatronConfig(overlap_grad_reduce=True)),
    "tp": ("qwen3", MegatronConfig(tensor_model_parallel_size=2)),
    "tp_sequence_parallel": ("qwen3", MegatronConfig(tensor_model_parallel_size=2, sequence_parallel=True)),
    "tp_llama": ("llama", MegatronConfig(tensor_model_parallel_size=2)),
    "tp_qwen2": ("qwen2", MegatronConfig(tensor_model_parallel_size=2)),
    "pp": ("qwen3", MegatronConfig(pipeline_model_parallel_size=2)),
    "pp_llama": ("llama", MegatronConfig(pipeline_model_parallel_size=2)),
}


def run(mode: str, model_dir: str, parallel: MegatronConfig, out: Path) -> None:
    trainer = MegatronTrainer(model_dir, CONFIG, LOSS, parallel=parallel)
    exported = {k: v.clone() for k, v in trainer.named_weights()}
    sequences = make_sequences(SAMPLES)
    logprobs = trainer.logprobs(sequences)
    size, steps = trainer.data_parallel_size, CONFIG.num_steps_per_rollout
    share = data_parallel_share(sequences, SAMPLES, 1, trainer.data_parallel_rank, size)
    trainer.accumulate_gradients(share, ref=trainer.reference_logprobs(share))
    grads = megatron_grads(trainer)
    trainer.ddp.zero_grad_buffer()
    metrics = trainer.train_rollout(data_parallel_share(sequences, SAMPLES, steps, trainer.data_parallel_rank, size), SAMPLES // size)
    weights = {k: v.clone() for k, v in trainer.named_weights()}
    if mode == "tp":
        trainer.save_checkpoint(out / "tp_checkpoint")
    if dist.get_rank() == 0:
        torch.save({"exported": exported, "logprobs": logprobs, "grads": grads, "metrics": metrics, "weights": weights}, out / f"{mode}.pt")
    trainer.close()


def pp_without_tensor_cuda(model_dir: str, out: Path) -> None:
    """CPU mode without its ``tensor_cuda`` redirection, where a pipeline with tied embeddings
    needs it: the error is saved (``None`` if it ran, which means the redirection is obsolete)."""
    full = cpu_mode.REDIRECTIONS
    cpu_mode.REDIRECTIONS = full - {"tensor_cuda"}
    try:
        MegatronTrainer(model_dir, CONFIG, LOSS, parallel=MegatronConfig(pipeline_model_parallel_size=2)).close()
        error = None
    except AssertionError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        cpu_mode.REDIRECTIONS = full
    if dist.get_rank() == 0:
        torch.save({"error": error}, out / "pp_without_tensor_cuda.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dirs", required=True, type=json.loads)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    dist.init_process_group("gloo")
    for mode in args.modes:
        kind, parallel = MODES[mode]
        run(mode, args.model_dirs[kind], parallel, args.out)
    pp_without_tensor_cuda(args.model_dirs["qwen3"], args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
