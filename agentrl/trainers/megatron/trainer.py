"""The Megatron-Core trainer: the same GRPO-family training as :class:`TorchTrainer`, on a
tensor/pipeline/data-parallel Megatron ``GPTModel``.

It takes the same inputs (:class:`~agentrl.trainers.batching.TrainSequence` lists, packed into the
same micro-batches by :func:`~agentrl.trainers.batching.pack` and
:func:`~agentrl.trainers.batching.collate`) and computes the same loss with the same weights
(:mod:`agentrl.trainers.algorithms`), so one optimizer step of either backend on one batch makes
the same update. What Megatron adds:

* the micro-batches run through Megatron's schedule (``get_forward_backward_func``: 1F1B across
  pipeline stages), then ``finalize_model_grads`` sums the gradients over data-parallel ranks
  (and the sequence-parallel / q-k norm gradients over tensor-parallel ones); agentrl's loss
  weights already normalise over the whole step, so nothing is rescaled;
* Megatron's optimizer (fp32 master weights under bf16, optionally sharded across data-parallel
  ranks) with PyTorch's AdamW, every parameter decayed, as the PyTorch backend does;
* reference log-probs from a CPU snapshot of the initial weights swapped in (no second model).

Data: every rank of one model-parallel group (tensor and pipeline ranks of one data-parallel
rank) must be given the same sequences; data-parallel ranks get their own shares, as with the
PyTorch backend. Metrics are those of the whole step (summed over data-parallel ranks) on every
rank.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM

from agentrl.errors import ConfigError
from agentrl.trainers.algorithms import LossConfig, LossInputs, loss_weights, over_kept, policy_loss
from agentrl.trainers.base import non_finite_gradients
from agentrl.trainers.batching import MicroBatch, TrainSequence, collate, micro_batches, optimizer_step_slices
from agentrl.trainers.fused_kernels import liger_rms_norm
from agentrl.trainers.host_memory import release_freed_memory
from agentrl.trainers.lr_schedule import learning_rate
from agentrl.trainers.megatron import checkpoint, parallel
from agentrl.trainers.megatron.config import MegatronConfig
from agentrl.trainers.megatron.convert import Geometry
from agentrl.trainers.megatron.forward import decoder_output, head_logprobs, pad_row
from agentrl.trainers.megatron.mcore import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    OptimizerConfig,
    finalize_model_grads,
    get_forward_backward_func,
    get_megatron_optimizer,
    parallel_state,
    running,
)
from agentrl.trainers.megatron.model import build_model, padded_vocab_size
from agentrl.trainers.megatron.snapshot import WeightSnapshot
from agentrl.trainers.megatron.weights import export_hf, write_hf_dir
from agentrl.trainers.torch_trainer import TrainerConfig

T = TypeVar("T")


@dataclass
class _MicroBatch:
    """One micro-batch of a step and what its loss needs beyond the model's output."""

    batch: MicroBatch  # on the trainer's device
    indices: list[int]  # the step's sequences it holds
    weights: Tensor | None = None  # [N] loss weights (None for log-probs only)
    old_logp: Tensor | None = None  # [N] the ratio's log-probs, when not the current policy's own
    ref_logp: Tensor | None = None  # [N] reference log-probs, when the KL loss is on


class MegatronTrainer:
    """Trains a Llama/Qwen2/Qwen3 model with Megatron-Core. See the module docstring.

    Args:
        model_dir: a Hugging Face directory, or a Megatron checkpoint (:mod:`.checkpoint`).
        config: optimizer and batching settings, shared with the PyTorch backend. ``bf16`` makes
            the parameters bf16 with fp32 master weights in the optimizer.
        loss: the loss settings; a CPU snapshot of the initial weights is kept when ``use_kl_loss``.
        device: ``cpu`` (CPU mode, see :mod:`.cpu_mode`) or this rank's CUDA device.
        parallel: Megatron's parallelism settings (``None``: all sizes 1).
        seed: the seed of Megatron's model-parallel RNG tracker.

    Raises:
        ConfigError: settings the model, the world or the device cannot run.
        ModelError: a model the conversion does not support.
    """

    def __init__(self, model_dir: str | Path, config: TrainerConfig, loss: LossConfig, *, device: str | torch.device = "cpu",
                 parallel: MegatronConfig | None = None, seed: int = 0) -> None:
        if config.torch_compile:
            raise ConfigError("--torch-compile is for --train-backend torch; the Megatron backend fuses its SwiGLU itself on CUDA "
                              "and takes liger-kernel's RMSNorm with --use-liger-kernel")
        self.config, self.loss = config, loss
        self.device = torch.device(device)
        self.parallel = (parallel or MegatronConfig()).with_recompute(config.gradient_checkpointing)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.source = Path(model_dir)
        self.hf_dir = checkpoint.hf_files_dir(self.source)
        self.hf_config = AutoConfig.from_pretrained(self.hf_dir)
        self.tied = bool(self.hf_config.tie_word_embeddings)
        self.dtype = torch.bfloat16 if config.bf16 else torch.float32
        self.steps = 0  # optimizer steps taken: the learning-rate schedule's position
        with self._megatron():
            self._build(seed)
        self.ref = WeightSnapshot(self.model) if loss.use_kl_loss else None
        self.num_parameters = _hf_parameter_count(self.hf_config)

    def _build(self, seed: int) -> None:
        parallel.acquire(self.parallel, self.device, seed=seed)
        try:
            norm_kernel = liger_rms_norm(self.device) if self.config.use_liger_kernel else None
            self.model = build_model(self.hf_config, self.parallel, bf16=self.config.bf16, cpu=self.device.type == "cpu",
                                     norm_kernel=norm_kernel).to(self.device)
            self.geometry = Geometry.of(self.hf_config, padded_vocab=padded_vocab_size(self.hf_config.vocab_size, self.parallel),
                                        tp=self.parallel.tensor_model_parallel_size)
            checkpoint.load_weights(self.source, self.model, self.geometry, tied=self.tied)
            ddp_config = DistributedDataParallelConfig(
                grad_reduce_in_fp32=self.parallel.accumulate_allreduce_grads_in_fp32 or not self.config.bf16,
                overlap_grad_reduce=self.parallel.overlap_grad_reduce, use_distributed_optimizer=self.parallel.use_distributed_optimizer,
            )
            self.ddp = DistributedDataParallel(self.model.config, ddp_config, self.model)
            self.model.config.no_sync_func = self.ddp.no_sync
            self.optimizer = get_megatron_optimizer(self._optimizer_config(), [self.ddp], config_overrides={})
        except BaseException:
            parallel.release()
            raise

    def _optimizer_config(self) -> OptimizerConfig:
        c = self.config
        return OptimizerConfig(
            optimizer="adam", lr=c.lr, min_lr=c.min_lr, weight_decay=c.weight_decay, adam_beta1=c.adam_beta1, adam_beta2=c.adam_beta2,
            adam_eps=c.adam_eps, clip_grad=c.clip_grad or math.inf, bf16=c.bf16, params_dtype=self.dtype,
            use_distributed_optimizer=self.parallel.use_distributed_optimizer,
        )

    def _megatron(self) -> contextlib.AbstractContextManager[None]:
        return running(self.device)

    # ------------------------------------------------------------------ training
    def train_rollout(self, sequences: Sequence[TrainSequence], num_samples: int) -> dict[str, float]:
        """Run the optimizer steps of one rollout and return their averaged metrics.

        Args:
            sequences: this data-parallel rank's sequences; ``sample_index`` runs over
                ``range(num_samples)`` and step ``k`` trains its ``k``-th equal slice, so with several
                steps per rollout each rank's slice ``k`` must be its part of the rollout's step ``k``
                (for the update to equal one rank's on the whole rollout).
            num_samples: this rank's number of samples (trajectories) in the rollout.
        """
        steps = self.config.num_steps_per_rollout
        old = self.logprobs(sequences) if steps > 1 else None
        ref = self.reference_logprobs(sequences) if self.ref is not None else None
        totals: dict[str, float] = defaultdict(float)
        for chosen in optimizer_step_slices(sequences, num_samples, steps):
            started = time.perf_counter()
            metrics = self.accumulate_gradients([sequences[i] for i in chosen], old=[old[i] for i in chosen] if old else None,
                                                ref=[ref[i] for i in chosen] if ref else None)
            metrics |= self.apply_gradients()
            metrics["perf/train_tokens_per_s"] = metrics["train/tokens"] / (time.perf_counter() - started)
            for k, v in metrics.items():
                totals[k] += v / steps
        totals["train/optimizer_steps"] = steps
        if self.device.type == "cpu":  # activations freed by the step stay resident otherwise (see host_memory)
            release_freed_memory()
        return dict(totals)

    def accumulate_gradients(self, sequences: Sequence[TrainSequence], *, old: list[Tensor] | None = None,
                             ref: list[Tensor] | None = None) -> dict[str, float]:
        """Add the gradients of one optimizer step's loss over ``sequences`` (see
        :meth:`TorchTrainer.accumulate_gradients`); the data-parallel reduction happens here."""
        samples = sorted({s.sample_index for s in sequences})
        position_of = torch.zeros(max(samples) + 1 if samples else 1, dtype=torch.long)
        position_of[samples] = torch.arange(len(samples))
        trained = torch.zeros(len(samples))
        for s in sequences:
            trained[position_of[s.sample_index]] += sum(s.loss_mask)
        counts = kept_counts = self._all_reduce_counts(len(samples), int(trained.sum()))
        if not (self.loss.use_kl_loss or self.loss.entropy_coef != 0):  # zero-advantage sequences add nothing to the gradient
            keep = [i for i, s in enumerate(sequences) if any(a != 0 for a in s.advantages)]
            sequences, old, ref = [sequences[i] for i in keep], [old[i] for i in keep] if old else None, [ref[i] for i in keep] if ref else None
            kept = {s.sample_index for s in sequences}
            kept_counts = self._all_reduce_counts(len(kept), int(sum(trained[position_of[k]] for k in kept)))
        items, tokens = [], 0
        for indices in self._micro_batches(sequences):
            cpu_batch = collate([sequences[i] for i in indices])
            weights = loss_weights(cpu_batch.loss_mask, position_of[cpu_batch.sample_index], trained, step_samples=counts[0],
                                   step_tokens=counts[1], per_token=self.config.calculate_per_token_loss)
            items.append(_MicroBatch(self._on_device(cpu_batch), indices, weights.to(self.device),  # all copied before any is computed
                                     old_logp=torch.cat([old[i] for i in indices]).to(self.device) if old else None,
                                     ref_logp=torch.cat([ref[i] for i in indices]).to(self.device) if ref else None))
            tokens += cpu_batch.num_tokens
        with self._megatron():
            outputs = self._run_schedule(items, self._loss, forward_only=False)
            finalize_model_grads([self.ddp])
        metrics: dict[str, float] = defaultdict(float, {"train/tokens": float(tokens)})
        for out in outputs:
            for k, v in out.items():
                metrics[f"train/{k}"] += float(v)
        which = 1 if self.config.calculate_per_token_loss else 0
        return over_kept(self._step_metrics(dict(metrics)), counted=counts[which], kept=kept_counts[which])

    def apply_gradients(self) -> dict[str, float]:
        """Clip the accumulated gradients, take the AdamW step at this step's learning rate and
        clear the gradients."""
        c = self.config
        lr = learning_rate(self.steps, lr=c.lr, min_lr=c.min_lr, warmup=c.lr_warmup_iters, decay_iters=c.lr_decay_iters, style=c.lr_decay_style)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self._megatron():
            if not self._grads_finite():  # Megatron steps on NaN gradients unless a loss scaler (fp16) is in use
                self.ddp.zero_grad_buffer()
                raise non_finite_gradients(self.steps, math.nan)
            updated, grad_norm, _ = self.optimizer.step()
            self.ddp.zero_grad_buffer()
            self.optimizer.zero_grad()
        if not updated:
            raise non_finite_gradients(self.steps, grad_norm)
        self.steps += 1
        return {"train/grad_norm": float(grad_norm), "train/lr": lr}

    def _micro_batches(self, sequences: Sequence[TrainSequence]) -> list[list[int]]:
        c = self.config
        return micro_batches(sequences, dynamic=c.use_dynamic_batch_size, max_tokens=c.max_tokens_per_gpu, micro_batch_size=c.micro_batch_size)

    def _on_device(self, batch: MicroBatch) -> MicroBatch:
        if self.parallel.sequence_parallel:
            batch = pad_row(batch, self.parallel.tensor_model_parallel_size)
        return batch.to(self.device)

    def _run_schedule(self, items: list[_MicroBatch], loss_func: Any, *, forward_only: bool) -> list[dict[str, Tensor]]:
        """Run ``items`` through Megatron's schedule; returns the loss functions' metric dicts (on
        the last pipeline stage; empty elsewhere)."""
        if not items:
            return []

        def forward_step(data: Iterator[_MicroBatch], model: Any) -> tuple[Tensor, Any]:
            item = next(data)
            return decoder_output(self.model, item.batch), functools.partial(loss_func, item)

        run = get_forward_backward_func()
        outputs: list[dict[str, Tensor]] = run(
            forward_step_func=forward_step, data_iterator=iter(items), model=[self.ddp], num_microbatches=len(items),
            seq_length=max(i.batch.num_tokens for i in items), micro_batch_size=1, forward_only=forward_only,
        )
        return outputs

    def _loss(self, item: _MicroBatch, hidden: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        batch = item.batch
        assert item.weights is not None, "training micro-batches carry loss weights"
        logp, entropy = head_logprobs(self.model, hidden, batch, vocab_size=self.geometry.vocab, temperature=self.config.temperature,
                                      with_entropy=self.loss.entropy_coef != 0)
        inputs = LossInputs(
            logp=logp, old_logp=item.old_logp if item.old_logp is not None else logp.detach(),
            advantages=batch.advantages, weights=item.weights, sample_index=batch.local_index, rollout_logp=batch.rollout_logprobs,
            ref_logp=item.ref_logp, entropy=entropy,
        )
        loss, metrics = policy_loss(inputs, self.loss)
        return loss, torch.zeros((), dtype=torch.int, device=self.device), {k: v.detach() for k, v in metrics.items()}

    # ------------------------------------------------------------------ log-probs
    @torch.no_grad()
    def logprobs(self, sequences: Sequence[TrainSequence]) -> list[Tensor]:
        """Per-sequence log-probs ``[L - P]`` of the response tokens under the current weights
        (fp32, on the CPU, on every rank)."""
        items = [_MicroBatch(self._on_device(collate([sequences[i] for i in indices])), indices) for indices in self._micro_batches(sequences)]
        with self._megatron():
            outputs = self._run_schedule(items, self._logprob_output, forward_only=True)
        out: list[Tensor] = []
        for item, output in zip(items, outputs):
            sizes = [len(sequences[i]) - sequences[i].prompt_len for i in item.indices]
            out.extend(output["logp"].cpu().split(sizes))
        return self._from_last_stage(out)

    def _logprob_output(self, item: _MicroBatch, hidden: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logp, _ = head_logprobs(self.model, hidden, item.batch, vocab_size=self.geometry.vocab, temperature=self.config.temperature)
        zero = torch.zeros((), device=self.device)
        return zero, zero.int(), {"logp": logp}

    def reference_logprobs(self, sequences: Sequence[TrainSequence]) -> list[Tensor]:
        """:meth:`logprobs` under the initial weights (swapped in from their CPU snapshot)."""
        if self.ref is None:
            raise ConfigError("reference log-probs need --use-kl-loss (the snapshot of the initial weights is kept only then)")
        with self.ref.swapped_in(self.model):
            return self.logprobs(sequences)

    # ------------------------------------------------------------------ collectives
    def _grads_finite(self) -> bool:
        """Whether every rank's reduced gradients (``main_grad``) are finite: one flag, all-reduced."""
        grads = [p.main_grad for p in self.model.parameters() if p.requires_grad and getattr(p, "main_grad", None) is not None]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all().to(torch.float32).reshape(1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item())

    def _all_reduce_counts(self, samples: int, tokens: int) -> tuple[int, int]:
        group = parallel.data_parallel_group()
        if dist.get_world_size(group) == 1:
            return samples, tokens
        counts = torch.tensor([samples, tokens], dtype=torch.long, device=self.device)
        dist.all_reduce(counts, group=group)
        return int(counts[0]), int(counts[1])

    def _step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """The step's metrics on every rank: summed over data-parallel ranks, from the last stage."""
        group = parallel.data_parallel_group()
        if dist.get_world_size(group) > 1:
            gathered: list[dict[str, float]] = [{} for _ in range(dist.get_world_size(group))]
            dist.all_gather_object(gathered, metrics, group=group)
            summed: dict[str, float] = defaultdict(float)
            for m in gathered:
                for k, v in m.items():
                    summed[k] += v
            metrics = dict(summed)
        return self._from_last_stage(metrics)

    def _from_last_stage(self, value: T) -> T:
        group = parallel_state.get_pipeline_model_parallel_group()
        if dist.get_world_size(group) == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=parallel.pipeline_last_rank(), group=group)
        return box[0]

    # ------------------------------------------------------------------ weights and state
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The policy's weights under Hugging Face names, one tensor at a time, gathered across
        tensor- and pipeline-parallel ranks (every rank gets all; every rank must exhaust it)."""
        return export_hf(self.model, self.geometry, tied=self.tied, device=self.device)

    def save_hf(self, path: str | Path) -> None:
        """Export the policy as a Hugging Face directory (safetensors in the parameters' dtype,
        with the source's config and tokenizer files); rank 0 writes, every rank must call it."""
        write_hf_dir(self.named_weights(), self.hf_dir, Path(path), dtype=self.dtype)

    def save_checkpoint(self, path: str | Path) -> None:
        """Write model, optimizer and step to the new directory ``path`` with
        ``dist_checkpointing`` (every rank calls it); :meth:`load_checkpoint` resumes exactly."""
        with self._megatron():
            checkpoint.save(Path(path), self.model, self.optimizer, {"steps": self.steps}, self.hf_dir)

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (at the same or other parallel sizes, except
        for the distributed optimizer, which needs the same data-parallel size)."""
        with self._megatron():
            state = checkpoint.load(Path(path), self.model, self.optimizer)
        self.steps = int(state["steps"])

    def state_dict(self) -> dict[str, Any]:
        """Model, optimizer and step as plain data, for agentrl's single-process checkpoints;
        with several ranks or the distributed optimizer use :meth:`save_checkpoint`."""
        self._check_plain_state("state_dict")
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_plain_state("load_state_dict")
        with torch.no_grad():
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def _check_plain_state(self, what: str) -> None:
        if dist.get_world_size() > 1 or self.parallel.use_distributed_optimizer:
            raise ConfigError(f"MegatronTrainer.{what} holds one process's state without the distributed optimizer; "
                              f"with {dist.get_world_size()} ranks or --use-distributed-optimizer use save_checkpoint/load_checkpoint")

    # ------------------------------------------------------------------ topology and lifetime
    @property
    def data_parallel_rank(self) -> int:
        """Which share of the samples this rank trains on."""
        return int(parallel_state.get_data_parallel_rank())

    @property
    def data_parallel_size(self) -> int:
        """How many shares the samples are split into."""
        return int(parallel_state.get_data_parallel_world_size())

    def close(self) -> None:
        """Release Megatron's process groups (the last trainer of the process destroys them)."""
        parallel.release()


def _hf_parameter_count(hf: Any) -> int:
    """Parameters of the Hugging Face model (tied ones once), counted on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    return sum(p.numel() for p in model.parameters())
