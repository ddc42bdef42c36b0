"""Megatron-Core's process groups for a :class:`~agentrl.trainers.megatron.config.MegatronConfig`.

A launcher that starts several ranks (``torchrun``, Ray actors) initialises
``torch.distributed`` itself (NCCL on GPUs, gloo on CPUs) and sets each rank's CUDA device;
a single process that has not done so gets a world of one (gloo on the CPU, NCCL on a GPU),
created here and destroyed again by :func:`release`. Megatron-Core keeps its groups in module
state, so the trainers of one process share them (counted: the last :func:`release` destroys
them); a trainer with other parallel sizes while another lives is refused. Groups found already
initialised by someone else are rebuilt.
"""

from __future__ import annotations

import datetime
import threading

import torch
import torch.distributed as dist

from agentrl.errors import ConfigError
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.mcore import parallel_state, tensor_parallel

_lock = threading.Lock()
_users = 0
_created_world = False


def acquire(parallel: MegatronConfig, device: torch.device, *, seed: int) -> None:
    """Make sure the world and Megatron's groups exist for ``parallel``; pair with :func:`release`.

    Raises:
        ConfigError: the world does not split into model copies of these sizes, or this process
            already has Megatron groups of other sizes.
    """
    global _users, _created_world
    with _lock:
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            store = dist.HashStore()  # type: ignore[attr-defined]  # exported by torch.distributed, untyped
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=datetime.timedelta(minutes=parallel.distributed_timeout_minutes))
            _created_world = True
        try:
            parallel.check_world(dist.get_world_size())
            if _users:
                _check_same(parallel)
            else:
                _initialize(parallel, seed)
        except BaseException:
            if not _users:
                _destroy()
            raise
        _users += 1


def _initialize(parallel: MegatronConfig, seed: int) -> None:
    if parallel_state.model_parallel_is_initialized():  # by someone else: rebuilt for these sizes
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        distributed_timeout_minutes=parallel.distributed_timeout_minutes,
    )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _check_same(parallel: MegatronConfig) -> None:
    have = (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_context_parallel_world_size())
    want = (parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size, parallel.context_parallel_size)
    if have != want:
        raise ConfigError(f"this process already runs Megatron with tensor/pipeline/context parallel sizes {have}; "
                          f"a trainer with {want} needs its own processes")


def release() -> None:
    """Undo one :func:`acquire`; the last one destroys Megatron's groups (and the world, if
    :func:`acquire` created it)."""
    global _users
    with _lock:
        _users -= 1
        if not _users:
            _destroy()


def _destroy() -> None:
    global _created_world
    parallel_state.destroy_model_parallel()
    if _created_world:
        dist.destroy_process_group()
        _created_world = False


def data_parallel_group() -> dist.ProcessGroup:
    """The ranks that hold the same model shard and train on different samples."""
    group: dist.ProcessGroup = parallel_state.get_data_parallel_group()
    return group


def pipeline_last_rank() -> int:
    """The global rank of this rank's last pipeline stage."""
    return int(parallel_state.get_pipeline_model_parallel_last_rank())
