"""The Megatron-Core API this backend relies on, in one place (pinned: ``megatron-core==0.16.1``).

Every other module of :mod:`agentrl.trainers.megatron` imports Megatron-Core through this one,
so the surface the backend depends on is the list below, and
``tests/trainers/megatron/test_api.py`` checks each name and the parameters it is called with
against the installed version: an upgrade that renames or drops one fails there, loudly,
instead of deep inside a training step.

Importing Megatron-Core warns that Transformer Engine and Apex are missing (they are: the local
layer spec and PyTorch's AdamW are used on purpose) and about its own deprecated modules; those
import-time warnings are silenced here. At run time it warns about its own deprecations: the
ones listed in :data:`KNOWN_WARNINGS` are silenced inside :func:`running`, any other one shows
(and fails the tests, which treat warnings as errors).
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator

import torch

from agentrl.trainers.megatron.cpu_mode import cpu_mode

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
    from megatron.core.package_info import __version__ as MCORE_VERSION
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from megatron.core.transformer import MegatronModule, TransformerConfig
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

PINNED_VERSION = "0.16.1"
KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (UserWarning, "full scope is deprecated. Use empty cuda_graph_scope"),  # TransformerConfig's own default
    (DeprecationWarning, "MLP requires ffn_hidden_size, but it was not provided"),  # its local spec
    (DeprecationWarning, "tp_group is None, using default tp group"),  # its tensor-parallel layers
    (FutureWarning, "`load_state_dict` is deprecated and will be removed"),  # dist_checkpointing calling torch's
    (FutureWarning, "Please use DTensor instead and we are deprecating ShardedTensor"),  # dist_checkpointing
    (FutureWarning, "`torch.distributed.reduce_scatter_tensor` is deprecated"),  # the distributed optimizer, sequence parallelism
    (FutureWarning, "`torch.distributed.all_gather_into_tensor` is deprecated"),  # the same, and tensor-parallel gathers
    (UserWarning, "If you are using transformer_engine as the transformer implementation, the core_attn"),  # selective recompute
)
"""Warnings Megatron-Core 0.16.1 raises on its own code paths, with nothing for a caller to change."""


@contextlib.contextmanager
def running(device: torch.device) -> Iterator[None]:
    """Where every call into Megatron-Core runs: :data:`KNOWN_WARNINGS` silenced, and in
    :func:`~agentrl.trainers.megatron.cpu_mode.cpu_mode` when ``device`` is the CPU."""
    with warnings.catch_warnings(), cpu_mode() if device.type == "cpu" else contextlib.nullcontext():
        for category, text in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=".*" + re.escape(text), category=category)
        yield

__all__ = [
    "MCORE_VERSION",
    "PINNED_VERSION",
    "AttnMaskType",
    "DistributedDataParallel",
    "DistributedDataParallelConfig",
    "GPTModel",
    "IdentityOp",
    "MegatronModule",
    "MegatronOptimizer",
    "ModuleSpec",
    "OptimizerConfig",
    "PackedSeqParams",
    "TransformerBlockSubmodules",
    "TransformerConfig",
    "dist_checkpointing",
    "finalize_model_grads",
    "get_forward_backward_func",
    "get_gpt_layer_local_spec",
    "get_megatron_optimizer",
    "get_num_layers_to_build",
    "parallel_state",
    "running",
    "tensor_parallel",
]
