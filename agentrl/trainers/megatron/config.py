"""The Megatron backend's own settings, under Megatron-LM's flag names (``--tensor-model-parallel-size``
is ``tensor_model_parallel_size``), validated when built.

Everything the PyTorch backend also has (optimizer, learning-rate schedule, micro-batching by
``--micro-batch-size`` or ``--max-tokens-per-gpu``, bf16, temperature) stays in
:class:`agentrl.trainers.torch_trainer.TrainerConfig`; this class holds only what Megatron adds.
Pure Python (no Megatron import), so configs load on machines without Megatron-Core.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from agentrl.errors import ConfigError

RecomputeGranularity = Literal["full", "selective"]
RecomputeMethod = Literal["uniform", "block"]
RECOMPUTE_GRANULARITIES: tuple[str, ...] = ("full", "selective")
RECOMPUTE_METHODS: tuple[str, ...] = ("uniform", "block")


@dataclass(frozen=True)
class MegatronConfig:
    """Parallelism and memory settings of the Megatron-Core backend (Megatron-LM's flags).

    Attributes:
        tensor_model_parallel_size: ranks that split each layer's matrices (heads, FFN columns,
            vocabulary); must divide the attention heads and the key/value heads.
        pipeline_model_parallel_size: ranks that split the layers into consecutive stages; must
            divide the number of layers.
        context_parallel_size: must be 1: context parallelism needs Transformer Engine's attention.
        sequence_parallel: also split norms, dropout and residuals along the tokens across the
            tensor-parallel ranks (needs ``tensor_model_parallel_size > 1``); micro-batches are
            padded to a multiple of the tensor-parallel size.
        use_distributed_optimizer: shard the fp32 master weights and Adam moments across
            data-parallel ranks (ZeRO-1); checkpoints then go through :meth:`save_checkpoint`.
        recompute_granularity: recompute activations in backward: ``full`` (whole layers, as
            ``recompute_method``/``recompute_num_layers`` say) or ``selective`` (attention
            core only); ``None`` keeps every activation.
        recompute_method: ``uniform`` (every ``recompute_num_layers`` layers a checkpoint) or
            ``block`` (the first ``recompute_num_layers`` layers of each stage); ``full`` only.
        recompute_num_layers: see ``recompute_method``; ``full`` only.
        make_vocab_size_divisible_by: the embedding and output rows are padded to a multiple of
            this times ``tensor_model_parallel_size`` (the padding never reaches a softmax and is
            dropped on export).
        accumulate_allreduce_grads_in_fp32: keep gradients and their all-reduce in fp32 under
            bf16 (Megatron's default is False; agentrl's True, as its PyTorch backend does).
        overlap_grad_reduce: overlap the data-parallel gradient reduction with the backward pass.
        distributed_timeout_minutes: timeout of every collective of the process groups this
            backend creates.
    """

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    sequence_parallel: bool = False
    use_distributed_optimizer: bool = False
    recompute_granularity: RecomputeGranularity | None = None
    recompute_method: RecomputeMethod | None = None
    recompute_num_layers: int | None = None
    make_vocab_size_divisible_by: int = 128
    accumulate_allreduce_grads_in_fp32: bool = True
    overlap_grad_reduce: bool = False
    distributed_timeout_minutes: int = 10

    def __post_init__(self) -> None:
        for name in ("tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
                     "make_vocab_size_divisible_by", "distributed_timeout_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_flag(name)} must be an integer >= 1, got {value!r}")
        if self.context_parallel_size != 1:
            raise ConfigError(f"--context-parallel-size {self.context_parallel_size}: context parallelism needs Transformer Engine's attention, "
                              "which this backend does not use; pass 1")
        if self.sequence_parallel and self.tensor_model_parallel_size == 1:
            raise ConfigError("--sequence-parallel needs --tensor-model-parallel-size > 1 (it splits tokens across the tensor-parallel ranks)")
        self._check_recompute()

    def _check_recompute(self) -> None:
        granularity, method, layers = self.recompute_granularity, self.recompute_method, self.recompute_num_layers
        if granularity is not None and granularity not in RECOMPUTE_GRANULARITIES:
            raise ConfigError(f"--recompute-granularity {granularity!r} is not one of {', '.join(RECOMPUTE_GRANULARITIES)}")
        if method is not None and method not in RECOMPUTE_METHODS:
            raise ConfigError(f"--recompute-method {method!r} is not one of {', '.join(RECOMPUTE_METHODS)}")
        if granularity == "full" and (method is None or layers is None):
            raise ConfigError("--recompute-granularity full needs --recompute-method (uniform or block) and --recompute-num-layers")
        if granularity != "full" and (method is not None or layers is not None):
            raise ConfigError("--recompute-method and --recompute-num-layers apply only with --recompute-granularity full")
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
            raise ConfigError(f"--recompute-num-layers must be an integer >= 1, got {layers!r}")

    @property
    def model_parallel_size(self) -> int:
        """Ranks that hold one copy of the model between them."""
        return self.tensor_model_parallel_size * self.pipeline_model_parallel_size * self.context_parallel_size

    def check_world(self, world_size: int) -> None:
        """Raise :class:`ConfigError` unless ``world_size`` ranks split into whole model copies."""
        if world_size % self.model_parallel_size:
            raise ConfigError(f"{world_size} ranks do not split into copies of --tensor-model-parallel-size {self.tensor_model_parallel_size} x "
                              f"--pipeline-model-parallel-size {self.pipeline_model_parallel_size} ranks; use a world size that is a multiple "
                              f"of {self.model_parallel_size}")

    def with_recompute(self, gradient_checkpointing: bool) -> MegatronConfig:
        """This config, with ``--gradient-checkpointing`` (the PyTorch backend's switch) read as
        full recomputation of every layer when no ``--recompute-granularity`` is set."""
        if not gradient_checkpointing or self.recompute_granularity is not None:
            return self
        return dataclasses.replace(self, recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")
