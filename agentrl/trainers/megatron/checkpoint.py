"""Megatron checkpoints: Megatron-Core ``dist_checkpointing`` directories that also carry the
Hugging Face files of their model, and ``agentrl convert``.

A checkpoint directory holds the sharded tensors (``torch_dist`` format, readable at other
tensor/pipeline/data-parallel sizes) under the keys ``model`` (always), ``optimizer`` (Adam
moments and fp32 master weights, from :meth:`MegatronTrainer.save_checkpoint`) and ``trainer``
(small plain state such as the optimizer step), plus ``hf/`` with the Hugging Face config and
tokenizer files of the model. A trainer can start from one as from a Hugging Face directory,
and ``agentrl convert --to hf`` turns one back into a Hugging Face directory.

Every rank of the job calls these functions (they run collectives); rank 0 writes ``hf/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from transformers import AutoConfig

from agentrl.errors import ConfigError
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.convert import Geometry
from agentrl.trainers.megatron.mcore import GPTModel, MegatronOptimizer, dist_checkpointing, running
from agentrl.trainers.megatron.model import build_model, padded_vocab_size
from agentrl.trainers.megatron.parallel import acquire, release
from agentrl.trainers.megatron.weights import HFWeights, copy_hf_files, export_hf, load_hf, write_hf_dir

HF_SUBDIR = "hf"
OPTIMIZER_FORMAT = {"distrib_optim_sharding_type": "dp_reshardable"}
"""How the distributed optimizer's shards are saved (Megatron-LM's default): resumable at another
data-parallel size only through Megatron-LM's own converter; the model part is fully reshardable."""


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint written here (and not a Hugging Face directory)."""
    return (path / "metadata.json").is_file() and (path / HF_SUBDIR / "config.json").is_file()


def hf_files_dir(path: Path) -> Path:
    """Where the Hugging Face config of ``path`` (a checkpoint or a Hugging Face directory) lives."""
    return path / HF_SUBDIR if is_checkpoint(path) else path


def _state(model: GPTModel, optimizer: MegatronOptimizer | None, *, loading: bool) -> dict[str, Any]:
    state: dict[str, Any] = {"model": model.sharded_state_dict()}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(state["model"], is_loading=loading, metadata=OPTIMIZER_FORMAT)
    return state


def save(path: Path, model: GPTModel, optimizer: MegatronOptimizer | None, trainer_state: dict[str, Any], hf_source: Path) -> None:
    """Write the checkpoint ``path`` (created; it must not hold another checkpoint)."""
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise ConfigError(f"{path} is not empty: a checkpoint is written into a new directory")
    dist.barrier()
    state = _state(model, optimizer, loading=False)
    state["trainer"] = trainer_state
    dist_checkpointing.save(state, str(path))
    if dist.get_rank() == 0:
        copy_hf_files(hf_source, path / HF_SUBDIR)
    dist.barrier()


def load(path: Path, model: GPTModel, optimizer: MegatronOptimizer | None) -> dict[str, Any]:
    """Load ``model`` (and ``optimizer``) from the checkpoint ``path``; returns its trainer state
    (empty for a checkpoint of weights only).

    Raises:
        ConfigError: ``path`` is not a checkpoint, or lacks the optimizer state asked for.
    """
    if not is_checkpoint(path):
        raise ConfigError(f"{path} is not a Megatron checkpoint (no metadata.json and {HF_SUBDIR}/config.json)")
    if optimizer is not None:
        steps = dist_checkpointing.load_common_state_dict(str(path)).get("trainer", {}).get("steps")
        if steps is None:
            raise ConfigError(f"{path} holds weights only (no optimizer state); start a trainer from it instead of resuming")
        _set_adam_steps(optimizer, int(steps))
    state = _state(model, optimizer, loading=True)
    try:
        loaded = dist_checkpointing.load(state, str(path))
    except Exception as e:  # Megatron raises CheckpointingException, KeyError, or torch's errors for missing keys
        raise ConfigError(f"{path}: cannot load {'model and optimizer' if optimizer else 'model'} state ({type(e).__name__}: {e})") from e
    with torch.no_grad():  # the fp32 distributed optimizer copies into leaf parameters
        model.load_state_dict(loaded["model"])
        if optimizer is not None:
            optimizer.load_state_dict(loaded["optimizer"])
            _set_adam_steps(optimizer, int(steps))
    trainer_state: dict[str, Any] = loaded.get("trainer", {})
    return trainer_state


def _set_adam_steps(optimizer: MegatronOptimizer, steps: int) -> None:
    """Give every parameter its own AdamW ``step`` tensor holding ``steps``, and zero moments
    where a fresh optimizer has none (a checkpoint's moments overwrite them).

    Works around two issues of Megatron-Core 0.16.1's distributed optimizer with PyTorch's AdamW
    (no Transformer Engine, no Apex; ``distrib_optimizer.py``): describing its state for loading
    first reads it back, asserting one ``step`` shared by every parameter (a never-stepped
    optimizer has none), and loading puts one ``step`` tensor into every parameter's state, so
    that each AdamW step then advances it once per parameter.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                state = inner.state[p]
                if not state:
                    state |= {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                state["step"] = torch.tensor(float(steps))


def load_weights(source: Path, model: GPTModel, geo: Geometry, *, tied: bool) -> None:
    """Fill this rank's ``model`` from ``source``: a checkpoint, or a Hugging Face directory."""
    if is_checkpoint(source):
        load(source, model, None)
    else:
        load_hf(model, HFWeights(source), geo, tied=tied)


def convert(source: Path, destination: Path, *, to: Literal["megatron", "hf"]) -> None:
    """``agentrl convert``: a Hugging Face directory to a checkpoint of weights only, or a
    checkpoint (of weights, or a trainer's) back to a Hugging Face directory, in the dtype of the
    model's config (bf16 stays bf16: the round trip is exact). Runs in this one process on the
    CPU with tensor/pipeline parallel 1; a checkpoint reshards when a trainer loads it."""
    if destination.exists() and any(destination.iterdir()):
        raise ConfigError(f"--output {destination} is not empty; pass a new directory")
    if is_checkpoint(source) != (to == "hf"):
        wanted = "a Hugging Face directory" if to == "megatron" else "a Megatron checkpoint (metadata.json and hf/config.json)"
        raise ConfigError(f"--to {to} converts {wanted}, and {source} is not one")
    hf_dir = hf_files_dir(source)
    hf = AutoConfig.from_pretrained(hf_dir)
    bf16 = str(getattr(hf, "dtype", "")).removeprefix("torch.") == "bfloat16"
    device, parallel = torch.device("cpu"), MegatronConfig()
    with running(device):
        acquire(parallel, device, seed=0)
        try:
            model = build_model(hf, parallel, bf16=bf16, cpu=True)
            geo = Geometry.of(hf, padded_vocab=padded_vocab_size(hf.vocab_size, parallel), tp=1)
            load_weights(source, model, geo, tied=bool(hf.tie_word_embeddings))
            if to == "megatron":
                save(destination, model, None, {}, hf_dir)
            else:
                named = export_hf(model, geo, tied=bool(hf.tie_word_embeddings), device=device)
                write_hf_dir(named, hf_dir, destination, dtype=torch.bfloat16 if bf16 else torch.float32)
        finally:
            release()
