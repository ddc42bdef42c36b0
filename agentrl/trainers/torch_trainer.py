"""The PyTorch trainer: a transformers causal LM trained with the GRPO-family loss.

One call of :meth:`TorchTrainer.train_rollout` consumes one rollout: its samples are split into
``num_steps_per_rollout`` optimizer steps of equal size (``global_batch_size`` samples each when
no episode was left out; a few fewer when some were, never an untrained rest); each step packs its
sequences into micro-batches (by token budget or by count), accumulates gradients with the loss
weights of :func:`~agentrl.trainers.algorithms.loss_weights`, clips and steps AdamW.

Precision: fp32 master weights and optimizer state; with ``bf16`` the forward and backward (LM head included) run
under ``torch.autocast(bfloat16)`` (AMX on CPUs that have it, tensor cores on GPUs). Log-probs are
always fp32 (see :mod:`agentrl.trainers.logprobs`).

Data parallel: when ``torch.distributed`` is initialised with several ranks, each rank trains on
its own share of the samples; the counts that normalise the loss are all-reduced before the
step and the summed gradients once after it (ranks may pack different numbers of micro-batches,
so there is no collective per backward), and the update equals the single-rank update on the
whole batch.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from transformers import AutoModelForCausalLM

from agentrl.errors import ConfigError
from agentrl.trainers.algorithms import LossConfig, LossInputs, loss_weights, over_kept, policy_loss
from agentrl.trainers.base import non_finite_gradients
from agentrl.trainers.batching import MicroBatch, TrainSequence, collate, micro_batches, optimizer_step_slices
from agentrl.trainers.fused_kernels import apply_liger_kernel, compile_decoder_layers
from agentrl.trainers.host_memory import release_freed_memory
from agentrl.trainers.logprobs import PackedDecoder, chosen_logprobs
from agentrl.trainers.lr_schedule import LrDecayStyle, learning_rate
from agentrl.trainers.packed_attention import PACKED_ATTENTION


@dataclass(frozen=True)
class TrainerConfig:
    """Optimizer and batching settings (slime's flag names).

    Attributes:
        lr, weight_decay, adam_beta1, adam_beta2, adam_eps: AdamW.
        lr_decay_style, lr_warmup_iters, lr_decay_iters, min_lr: the schedule of
            :mod:`agentrl.trainers.lr_schedule`, counted in optimizer steps.
        clip_grad: max global grad norm; 0 disables clipping.
        num_steps_per_rollout: optimizer steps per rollout; the samples of a rollout (however
            many are left after excluded episodes) are split evenly over them.
        micro_batch_size: sequences per micro-batch when ``use_dynamic_batch_size`` is off.
        use_dynamic_batch_size: pack micro-batches by token budget instead of by count.
        max_tokens_per_gpu: the token budget of a micro-batch.
        bf16: autocast forward/backward to bfloat16 (fp32 master weights).
        temperature: the rollout temperature; log-probs are of ``logits / temperature``.
        gradient_checkpointing: recompute activations in backward (less memory, more time).
        use_liger_kernel: liger-kernel's fused RMSNorm, SwiGLU and rotary kernels (CUDA; see
            :mod:`agentrl.trainers.fused_kernels`).
        torch_compile: compile each decoder layer with ``torch.compile`` (dynamic shapes): fewer,
            fused kernels and less host time per layer; the first micro-batches pay the compilation.
        calculate_per_token_loss: reduce the loss as a mean over every trained token of the step
            instead of the mean over samples of each sample's token mean.
    """

    lr: float = 1e-6
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    lr_decay_style: LrDecayStyle = "constant"
    lr_warmup_iters: int = 0
    lr_decay_iters: int = 1
    min_lr: float = 0.0
    clip_grad: float = 1.0
    num_steps_per_rollout: int = 1
    micro_batch_size: int = 1
    use_dynamic_batch_size: bool = False
    max_tokens_per_gpu: int | None = None
    bf16: bool = True
    temperature: float = 1.0
    gradient_checkpointing: bool = False
    calculate_per_token_loss: bool = False
    use_liger_kernel: bool = False
    torch_compile: bool = False

    def __post_init__(self) -> None:
        if self.num_steps_per_rollout < 1:
            raise ValueError(f"num_steps_per_rollout must be >= 1, got {self.num_steps_per_rollout}")
        if self.use_dynamic_batch_size and not self.max_tokens_per_gpu:
            raise ValueError("--use-dynamic-batch-size needs --max-tokens-per-gpu")


class TorchTrainer:
    """Trains a Hugging Face causal LM. See the module docstring.

    Args:
        model_dir: a Hugging Face model directory.
        config: optimizer and batching settings.
        loss: the loss settings; a reference model is kept only when ``loss.use_kl_loss``.
        device: where the model trains.
    """

    def __init__(self, model_dir: str | Path, config: TrainerConfig, loss: LossConfig, *, device: str | torch.device = "cpu") -> None:
        if config.use_liger_kernel and config.torch_compile:
            raise ConfigError("--use-liger-kernel with --torch-compile: torch.compile fails tracing liger-kernel's autograd functions "
                              "(torch 2.11, liger-kernel 0.8.5, on an H100); use --torch-compile alone, which fuses the same kernels "
                              "and trained 1.5x faster than --use-liger-kernel on an H100 (docs/benchmarks.md)")
        self.config, self.loss = config, loss
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=PACKED_ATTENTION)
        self.model.to(self.device)  # type: ignore[arg-type]  # transformers types .to's self oddly
        if config.use_liger_kernel:
            apply_liger_kernel(self.model, self.device)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.ref_model = _frozen_copy(self.model) if loss.use_kl_loss else None
        if config.torch_compile:  # after the copy: a copied compiled layer would still call the original's forward
            for model in (self.model, self.ref_model):
                if model is not None:
                    compile_decoder_layers(model)
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.decoder = PackedDecoder(self.model)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
            eps=config.adam_eps, weight_decay=config.weight_decay, fused=self.device.type == "cuda",
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: learning_rate(
            step, lr=config.lr, min_lr=config.min_lr, warmup=config.lr_warmup_iters,
            decay_iters=config.lr_decay_iters, style=config.lr_decay_style,
        ) / config.lr if config.lr else 1.0)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())

    # ------------------------------------------------------------------ training
    def train_rollout(self, sequences: Sequence[TrainSequence], num_samples: int) -> dict[str, float]:
        """Run the optimizer steps of one rollout and return their averaged metrics.

        Args:
            sequences: this rank's sequences; ``sample_index`` runs over ``range(num_samples)``.
            num_samples: this rank's number of samples (trajectories) in the rollout.
        """
        steps = self.config.num_steps_per_rollout  # the same on every rank: each step ends in collectives
        need_old = steps > 1
        old = self._logprobs(self.model, sequences) if need_old else None
        ref = self._logprobs(self.ref_model, sequences) if self.ref_model is not None else None
        totals: dict[str, float] = defaultdict(float)
        for chosen in optimizer_step_slices(sequences, num_samples, steps):
            step_metrics = self._optimizer_step(
                [sequences[i] for i in chosen],
                old=[old[i] for i in chosen] if old else None,
                ref=[ref[i] for i in chosen] if ref else None,
            )
            for k, v in step_metrics.items():
                totals[k] += v / steps
        totals["train/optimizer_steps"] = steps
        if self.device.type == "cpu":  # activations freed by the step stay resident otherwise (see host_memory)
            release_freed_memory()
        return dict(totals)

    def _optimizer_step(self, sequences: list[TrainSequence], *, old: list[Tensor] | None, ref: list[Tensor] | None) -> dict[str, float]:
        started = time.perf_counter()
        metrics = self.accumulate_gradients(sequences, old=old, ref=ref)
        metrics |= self.apply_gradients()
        metrics["perf/train_tokens_per_s"] = metrics["train/tokens"] / (time.perf_counter() - started)
        return metrics

    def accumulate_gradients(self, sequences: Sequence[TrainSequence], *, old: list[Tensor] | None = None, ref: list[Tensor] | None = None) -> dict[str, float]:
        """Add the gradients of one optimizer step's loss over ``sequences`` (all its micro-batches).

        Args:
            sequences: the step's sequences on this rank.
            old: per-sequence log-probs the ratio is taken against; ``None`` for the current
                policy's own (detached), which makes the step on-policy.
            ref: per-sequence reference log-probs, when the KL loss is on.
        """
        samples = sorted({s.sample_index for s in sequences})
        position_of = torch.zeros(max(samples) + 1 if samples else 1, dtype=torch.long)
        position_of[samples] = torch.arange(len(samples))
        trained = torch.zeros(len(samples))
        for s in sequences:
            trained[position_of[s.sample_index]] += sum(s.loss_mask)
        step_samples, step_tokens = self._all_reduce_counts(len(samples), int(trained.sum()))
        kept_samples, kept_tokens = step_samples, step_tokens
        sums: dict[str, Tensor] = {}  # on the device: read once after the last micro-batch, so the host never waits mid-step
        tokens = 0
        if not self._needs_every_sequence():  # zero-advantage sequences add nothing to the gradient
            keep = [i for i, s in enumerate(sequences) if any(a != 0 for a in s.advantages)]
            sequences = [sequences[i] for i in keep]
            old = [old[i] for i in keep] if old else None
            ref = [ref[i] for i in keep] if ref else None
            kept = {s.sample_index for s in sequences}
            kept_samples, kept_tokens = self._all_reduce_counts(len(kept), int(sum(trained[position_of[k]] for k in kept)))
        # Every micro-batch goes to the device before any is computed: a copy from pageable host
        # memory waits for the device's queue, so a copy between micro-batches stalls the host mid-step.
        staged = []
        for batch_indices in self._micro_batches(sequences):
            cpu_batch = collate([sequences[i] for i in batch_indices])
            staged.append((cpu_batch.to(self.device), position_of[cpu_batch.sample_index].to(self.device),
                           self._gather(old, batch_indices), self._gather(ref, batch_indices)))
        trained_here = trained.to(self.device)
        for batch, positions, old_logp, ref_logp in staged:
            weights = loss_weights(
                batch.loss_mask, positions, trained_here, step_samples=step_samples,
                step_tokens=step_tokens, per_token=self.config.calculate_per_token_loss,
            )
            loss, mb_metrics = policy_loss(self._loss_inputs(batch, weights, old_logp, ref_logp), self.loss)
            loss.backward()
            for k, v in mb_metrics.items():
                sums[k] = sums[k] + v.detach() if k in sums else v.detach()
            tokens += batch.num_tokens
        if self.world > 1:
            self._all_reduce_gradients()
        values = torch.stack([v.float() for v in sums.values()]).tolist() if sums else []
        metrics = {"train/tokens": float(tokens)} | {f"train/{k}": float(v) for k, v in zip(sums, values)}
        per_token = self.config.calculate_per_token_loss
        return over_kept(metrics, counted=step_tokens if per_token else step_samples, kept=kept_tokens if per_token else kept_samples)

    def _needs_every_sequence(self) -> bool:
        """Whether terms besides the advantage-weighted one (KL, entropy) reach every token."""
        return self.loss.use_kl_loss or self.loss.entropy_coef != 0

    def apply_gradients(self) -> dict[str, float]:
        """Clip the accumulated gradients, take the AdamW step and clear the gradients.

        Raises:
            TrainingError: the gradients are not finite; the weights are left as they were.
        """
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad or float("inf"))
        if not torch.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise non_finite_gradients(self.scheduler.last_epoch, float(grad_norm))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train/grad_norm": float(grad_norm), "train/lr": lr}

    def _micro_batches(self, sequences: Sequence[TrainSequence]) -> list[list[int]]:
        c = self.config
        return micro_batches(sequences, dynamic=c.use_dynamic_batch_size, max_tokens=c.max_tokens_per_gpu, micro_batch_size=c.micro_batch_size)

    def _gather(self, per_sequence: list[Tensor] | None, indices: list[int]) -> Tensor | None:
        """The log-probs of the sequences at ``indices``, concatenated on the device."""
        return torch.cat([per_sequence[i] for i in indices]).to(self.device) if per_sequence else None

    def _loss_inputs(self, batch: MicroBatch, weights: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None) -> LossInputs:
        with self._autocast():
            hidden = self.decoder(batch.input_ids, batch.position_ids, batch.cu_seq_lens, batch.max_length, batch.layout)
            logp, entropy = chosen_logprobs(
                hidden[batch.pred_index], self.model.get_output_embeddings(), batch.targets,
                temperature=self.config.temperature, with_entropy=self.loss.entropy_coef != 0,
            )
        return LossInputs(
            logp=logp,
            old_logp=old_logp if old_logp is not None else logp.detach(),
            advantages=batch.advantages,
            weights=weights,
            sample_index=batch.local_index,
            rollout_logp=batch.rollout_logprobs,
            ref_logp=ref_logp,
            entropy=entropy,
        )

    # ------------------------------------------------------------------ log-probs
    @torch.no_grad()
    def logprobs(self, sequences: Sequence[TrainSequence]) -> list[Tensor]:
        """Per-sequence log-probs ``[L - P]`` of the response tokens under the current weights."""
        return self._logprobs(self.model, sequences)

    @torch.no_grad()
    def _logprobs(self, model: nn.Module, sequences: Sequence[TrainSequence]) -> list[Tensor]:
        staged = [collate([sequences[i] for i in batch_indices]).to(self.device) for batch_indices in self._micro_batches(sequences)]
        out: list[Tensor] = []  # on the device until the last micro-batch (see accumulate_gradients)
        for batch in staged:
            with self._autocast():
                hidden = PackedDecoder(model)(batch.input_ids, batch.position_ids, batch.cu_seq_lens, batch.max_length, batch.layout)
                head: nn.Module = model.get_output_embeddings()  # type: ignore[operator]  # an HF model's method
                logp, _ = chosen_logprobs(hidden[batch.pred_index], head, batch.targets, temperature=self.config.temperature)
            out.append(logp)
        sizes = [len(s) - s.prompt_len for s in sequences]  # micro-batches keep the sequences' order
        return list(torch.cat(out).cpu().split(sizes)) if out else []

    # ------------------------------------------------------------------ weights and state
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """The policy's weights under Hugging Face names (for weight sync and export)."""
        yield from self.model.state_dict().items()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore weights, optimizer moments and the schedule's position; the optimizer settings
        and the learning-rate schedule are this run's (a resume with a new ``--lr`` uses it), as
        the Megatron backend's are."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        c = self.config
        self.scheduler.base_lrs = [c.lr] * len(self.optimizer.param_groups)
        lr = c.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(lr=lr, initial_lr=c.lr, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps, weight_decay=c.weight_decay)

    def save_hf(self, path: str | Path) -> None:
        """Export the policy as a Hugging Face model directory (safetensors)."""
        self.model.save_pretrained(path, safe_serialization=True)

    def close(self) -> None:
        """Nothing to release: the model and optimizer are plain memory."""

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16)

    def _all_reduce_gradients(self, bucket_elements: int = 2**26) -> None:
        """Sum the gradients over ranks (the loss weights already divide by the global counts),
        in flat buckets; a rank that trained on nothing contributes zeros."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[Tensor] = []
        for p in params:
            assert p.grad is not None, "only parameters with gradients are reduced"
            bucket.append(p.grad)
            if sum(g.numel() for g in bucket) >= bucket_elements or p is params[-1]:
                flat = torch.cat([g.flatten() for g in bucket])
                dist.all_reduce(flat)
                for g, reduced in zip(bucket, flat.split([g.numel() for g in bucket])):
                    g.copy_(reduced.view_as(g))
                bucket = []

    def _all_reduce_counts(self, samples: int, tokens: int) -> tuple[int, int]:
        if self.world == 1:
            return samples, tokens
        counts = torch.tensor([samples, tokens], dtype=torch.long, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(counts)
        return int(counts[0]), int(counts[1])


def _frozen_copy(model: nn.Module) -> nn.Module:
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
