"""Moving weights between a Hugging Face directory and a (tensor/pipeline-parallel) ``GPTModel``.

* :func:`load_hf` fills this rank's parameters from the safetensors of a Hugging Face
  directory: each rank reads the tensors its stage needs and keeps its tensor-parallel shard.
* :func:`export_hf` streams the model's weights under Hugging Face names, one tensor at a time,
  each gathered across the tensor-parallel ranks and broadcast from its pipeline stage: every
  rank of the model-parallel group gets every tensor, and every rank must exhaust the iterator
  (it runs collectives).
* :func:`write_hf_dir` writes such a stream as a Hugging Face directory (on rank 0).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import Tensor, nn
from transformers import AutoConfig

from agentrl.errors import ModelError
from agentrl.serving.safetensors_dir import PICKLE_SUFFIXES, safetensors_files, write_safetensors_dir
from agentrl.trainers.megatron.convert import EMBEDDING, Geometry, Rule, hf_names, rule_for, to_hf, to_megatron, tp_shard
from agentrl.trainers.megatron.mcore import GPTModel, parallel_state

LAYERS = "decoder.layers."


class HFWeights:
    """The tensors of a Hugging Face safetensors directory, read by name on demand."""

    def __init__(self, directory: Path) -> None:
        try:
            files = safetensors_files(directory)
        except ValueError as e:
            raise ModelError(f"cannot read Hugging Face weights: {e}") from e
        self.file_of: dict[str, Path] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                self.file_of.update(dict.fromkeys(f.keys(), path))

    def get(self, name: str) -> Tensor:
        """The tensor ``name``. Raises :class:`ModelError` when the directory lacks it."""
        path = self.file_of.get(name)
        if path is None:
            raise ModelError(f"the Hugging Face weights have no tensor {name!r} (found {len(self.file_of)} tensors)")
        with safe_open(str(path), framework="pt") as f:
            tensor: Tensor = f.get_tensor(name)
        return tensor


def parameters(model: GPTModel, *, tied: bool) -> Iterator[tuple[str, nn.Parameter, Rule, int | None]]:
    """Each parameter of this rank's model with its rule and global layer index (``None`` outside
    the layers). Raises :class:`ModelError` for a parameter no rule converts."""
    first_layer = {f"{LAYERS}{i}.": layer.layer_number - 1 for i, layer in enumerate(model.decoder.layers)}
    for name, param in model.named_parameters():
        prefix = ".".join(name.split(".")[:3]) + "." if name.startswith(LAYERS) else ""
        try:
            rule = rule_for(name[len(prefix):], tied=tied)
        except KeyError as e:
            raise ModelError(str(e.args[0])) from e
        yield name, param, rule, first_layer[prefix] if prefix else None


@torch.no_grad()
def load_hf(model: GPTModel, weights: HFWeights, geo: Geometry, *, tied: bool) -> None:
    """Copy every parameter of this rank's ``model`` from ``weights`` (its tensor-parallel shard).

    Raises:
        ModelError: a tensor is missing or its shape does not fit the parameter.
    """
    rank = parallel_state.get_tensor_model_parallel_rank()
    for name, param, rule, layer in parameters(model, tied=tied):
        try:
            full = to_megatron(rule, [weights.get(n) for n in hf_names(rule, layer)], geo)
        except (RuntimeError, ValueError) as e:  # a reshape that does not fit the config's geometry
            raise ModelError(f"{name} cannot be built from {hf_names(rule, layer)}: {e}") from e
        shard = tp_shard(full, rule, rank, geo.tp)
        if shard.shape != param.shape:
            raise ModelError(f"{name}: the Hugging Face weights give shape {tuple(shard.shape)}, the model has {tuple(param.shape)}")
        param.copy_(shard)


def _gather_tp(tensor: Tensor, rule: Rule) -> Tensor:
    """The full tensor of a tensor-parallel shard (all ranks of the group call this)."""
    group = parallel_state.get_tensor_model_parallel_group()
    if rule.tp_dim is None or dist.get_world_size(group) == 1:
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(shards, tensor.contiguous(), group=group)
    return torch.cat(shards, dim=rule.tp_dim)


@torch.no_grad()
def export_hf(model: GPTModel, geo: Geometry, *, tied: bool, device: torch.device) -> Iterator[tuple[str, Tensor]]:
    """The model's weights under Hugging Face names, stage by stage (see the module docstring).

    With tied embeddings ``lm_head.weight`` comes right after ``model.embed_tokens.weight`` as
    the same tensor, as a Hugging Face model's ``state_dict()`` has it.
    """
    group = parallel_state.get_pipeline_model_parallel_group()
    stages, mine = dist.get_world_size(group), parallel_state.get_pipeline_model_parallel_rank()
    local = [(p, rule, layer) for name, p, rule, layer in parameters(model, tied=tied) if not (tied and name == "output_layer.weight")]
    for stage in range(stages):
        metas: list[list[tuple[Rule, int | None, tuple[int, ...], torch.dtype]]] = [[(r, i, tuple(p.shape), p.dtype) for p, r, i in local]]
        if stages > 1:
            dist.broadcast_object_list(metas, src=dist.get_global_rank(group, stage), group=group)
        for i, (rule, layer, shape, dtype) in enumerate(metas[0]):
            full = _gather_tp(local[i][0].detach(), rule) if stage == mine else torch.empty(_full_shape(shape, rule, geo), dtype=dtype, device=device)
            if stages > 1:
                dist.broadcast(full, src=dist.get_global_rank(group, stage), group=group)
            for name, tensor in zip(hf_names(rule, layer), to_hf(rule, full, geo)):
                yield name, tensor
                if tied and rule is EMBEDDING:
                    yield "lm_head.weight", tensor


def _full_shape(shard: tuple[int, ...], rule: Rule, geo: Geometry) -> tuple[int, ...]:
    if rule.tp_dim is None:
        return shard
    return tuple(n * geo.tp if d == rule.tp_dim else n for d, n in enumerate(shard))


def copy_hf_files(source: Path, destination: Path) -> None:
    """Copy the files of a Hugging Face directory that are not weights (config, generation
    config, tokenizer, chat template) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        weights = path.name.endswith((".safetensors", ".safetensors.index.json")) or path.suffix in PICKLE_SUFFIXES
        if path.is_file() and not weights:
            shutil.copy2(path, destination / path.name)


def write_hf_dir(named: Iterable[tuple[str, Tensor]], source: Path, path: Path, *, dtype: torch.dtype) -> None:
    """Write ``named`` (tensors of ``dtype``) and the non-weight files of ``source`` as the Hugging
    Face directory ``path``. Only global rank 0 writes; every rank must call this, since
    ``named`` may run collectives."""
    if dist.get_rank() != 0:
        for _ in named:
            pass
        return
    copy_hf_files(source, path)
    config = AutoConfig.from_pretrained(source)
    config.dtype = dtype
    config.save_pretrained(path)
    write_safetensors_dir(path, named)
