"""The PyTorch trainer: packing is exact, reductions are right under accumulation, the first
step is on-policy, log-probs match the engine's, and weights move."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from agentrl.errors import TrainingError
from agentrl.trainers.algorithms import LossConfig, LossInputs, loss_weights, policy_loss
from agentrl.trainers.batching import TrainSequence, collate, optimizer_step_slices, pack
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig


def make_sequences(n: int, seed: int = 0, *, samples: int | None = None, group: int = 1) -> list[TrainSequence]:
    """``n`` random sequences; each run of ``group`` consecutive ones shares its prompt (a GRPO group)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if i % group == 0:
            prompt_ids = [rng.randrange(512) for _ in range(rng.randint(3, 12))]
        prompt, response = len(prompt_ids), rng.randint(2, 10)
        ids = prompt_ids + [rng.randrange(512) for _ in range(response)]
        mask = [1 if rng.random() < 0.8 else 0 for _ in range(response)]
        mask[0] = 1
        out.append(TrainSequence(ids, prompt, mask, [-1.0] * response, [rng.choice([-1.0, 0.5, 2.0])] * response, i % (samples or n)))
    return out


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def padded_loss(model, seqs: list[TrainSequence], per_token: bool) -> torch.Tensor:
    """The same loss computed the plain way: one padded batch, attention mask, full logits."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attn = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s.token_ids)
        attn[i, : len(s)] = 1
    logits = model(input_ids=ids, attention_mask=attn).logits.float()
    logp_all = torch.log_softmax(logits, -1)
    logps, advs, masks, samples = [], [], [], []
    for i, s in enumerate(seqs):
        positions = torch.arange(s.prompt_len - 1, len(s) - 1)
        logps.append(logp_all[i, positions].gather(-1, torch.tensor(s.token_ids[s.prompt_len:]).unsqueeze(-1)).squeeze(-1))
        advs += s.advantages
        masks += s.loss_mask
        samples += [s.sample_index] * len(s.advantages)
    logp = torch.cat(logps)
    sample_index = torch.tensor(samples)
    mask = torch.tensor(masks, dtype=torch.float32)
    counts = torch.zeros(int(sample_index.max()) + 1).index_add(0, sample_index, mask)
    w = loss_weights(mask, sample_index, counts, step_samples=len(counts), step_tokens=int(mask.sum()), per_token=per_token)
    loss, _ = policy_loss(LossInputs(logp, logp.detach(), torch.tensor(advs), w, sample_index), LossConfig())
    return loss


@pytest.mark.parametrize("group", [1, 3], ids=["own_prompts", "shared_prompts"])
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("batching", [dict(micro_batch_size=1), dict(micro_batch_size=3), dict(use_dynamic_batch_size=True, max_tokens_per_gpu=40)])
def test_packed_micro_batches_give_the_padded_loss_and_gradients(tiny_model_dir, per_token, batching, group):
    seqs = make_sequences(7, group=group)
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, calculate_per_token_loss=per_token, **batching), LossConfig())
    metrics = trainer.accumulate_gradients(seqs)
    packed = grads(trainer.model)

    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    loss = padded_loss(reference, seqs, per_token)
    loss.backward()
    expected = grads(reference)
    assert metrics["train/pg_loss"] == pytest.approx(loss.item(), abs=1e-5)
    for name, g in expected.items():
        torch.testing.assert_close(packed[name], g, atol=2e-5, rtol=1e-4, msg=name)


def test_pack_respects_the_token_budget_and_keeps_order():
    lengths = [5, 9, 3, 12, 4, 4, 30, 1]
    batches = pack(lengths, max_tokens=16)
    assert [i for b in batches for i in b] == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 16 or len(b) == 1 for b in batches)
    assert pack(lengths, max_sequences=3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    with pytest.raises(ValueError, match="exactly one"):
        pack(lengths)


def test_collate_selects_the_trained_positions_and_their_targets():
    seqs = make_sequences(3, seed=4)
    batch = collate(seqs)
    flat = batch.input_ids[0]
    assert batch.num_tokens == sum(len(s) for s in seqs)
    torch.testing.assert_close(flat[batch.pred_index + 1], batch.targets)
    assert batch.targets.tolist() == [t for s in seqs for t in s.token_ids[s.prompt_len:]]
    assert (batch.position_ids[0] == 0).sum() == 3


def test_collate_stores_a_groups_prompt_once():
    seqs = make_sequences(6, seed=4, group=3)
    batch = collate(seqs)
    saved = 2 * seqs[0].prompt_len + 2 * seqs[3].prompt_len
    assert batch.num_tokens == sum(len(s) for s in seqs) - saved
    assert batch.targets.tolist() == [t for s in seqs for t in s.token_ids[s.prompt_len:]]
    runs = batch.cu_seq_lens.tolist()
    assert batch.position_ids[0, runs[1]].item() == seqs[1].prompt_len  # a later sample continues after the shared prompt
    assert batch.layout.shares_prefixes
    assert collate(seqs, share_prompts=False).num_tokens == sum(len(s) for s in seqs)


def test_first_step_is_on_policy_ratio_one_and_kl_zero(tiny_model_dir):
    seqs = make_sequences(8)
    cfg = TrainerConfig(bf16=False, num_steps_per_rollout=2, lr=1e-3)  # two optimizer steps: old log-probs are recomputed
    trainer = TorchTrainer(tiny_model_dir, cfg, LossConfig(use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="low_var_kl"))
    old = trainer.logprobs(seqs[:4])
    first = trainer.accumulate_gradients(seqs[:4], old=old, ref=trainer._logprobs(trainer.ref_model, seqs[:4]))
    assert first["train/ppo_kl"] == 0.0 and first["train/pg_clipfrac"] == 0.0 and first["train/kl_loss"] == 0.0
    trainer.apply_gradients()
    second = trainer.accumulate_gradients(seqs[4:], old=trainer.logprobs(seqs[4:]), ref=trainer._logprobs(trainer.ref_model, seqs[4:]))
    assert second["train/kl_loss"] > 0  # the policy moved away from the reference


def test_an_update_changes_the_weights_and_the_log_probs_of_good_samples_rise(tiny_model_dir):
    seqs = [TrainSequence(list(range(10, 20)), 5, [1] * 5, [0.0] * 5, [1.0] * 5, 0)]
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, lr=1e-2, weight_decay=0.0), LossConfig())
    before = trainer.logprobs(seqs)[0].sum()
    for _ in range(3):
        trainer.train_rollout(seqs, num_samples=1)
    assert trainer.logprobs(seqs)[0].sum() > before + 0.5


def test_bf16_autocast_keeps_fp32_master_weights(tiny_model_dir):
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=True, lr=1e-3), LossConfig())
    metrics = trainer.train_rollout(make_sequences(2), num_samples=2)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert metrics["train/grad_norm"] > 0


def test_dynamic_batch_size_needs_a_token_budget():
    with pytest.raises(ValueError, match="--max-tokens-per-gpu"):
        TrainerConfig(use_dynamic_batch_size=True)


def test_every_sample_is_trained_when_an_excluded_episode_leaves_a_short_rollout(tiny_model_dir, monkeypatch):
    """2 optimizer steps of 32 planned; one episode left out: 63 samples, all in some step."""
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, num_steps_per_rollout=2, lr=1e-3), LossConfig())
    seen: list[set[int]] = []
    step = trainer._optimizer_step

    def recording_step(sequences, **kw):
        seen.append({s.sample_index for s in sequences})
        return step(sequences, **kw)

    monkeypatch.setattr(trainer, "_optimizer_step", recording_step)
    metrics = trainer.train_rollout(make_sequences(63, seed=5), num_samples=63)
    assert metrics["train/optimizer_steps"] == 2
    assert [len(s) for s in seen] == [31, 32] and set().union(*seen) == set(range(63))


def nan_loss(policy_loss_fn):
    """``policy_loss`` whose loss is NaN (as an overflowing importance ratio makes it)."""
    def loss(x, cfg):
        value, metrics = policy_loss_fn(x, cfg)
        return value * float("nan"), metrics
    return loss


def test_non_finite_gradients_stop_the_run_before_the_weights_change(tiny_model_dir, monkeypatch):
    import agentrl.trainers.torch_trainer

    monkeypatch.setattr(agentrl.trainers.torch_trainer, "policy_loss", nan_loss(policy_loss))
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, lr=1e-2), LossConfig())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with pytest.raises(TrainingError, match=r"optimizer step 1: the gradients are not finite \(grad norm nan\), so the weights were not updated"):
        trainer.train_rollout(make_sequences(4), num_samples=4)
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


@pytest.mark.parametrize(("samples", "steps", "sizes"), [(9, 4, [2, 2, 2, 3]), (10, 4, [2, 3, 2, 3]), (63, 2, [31, 32]), (64, 4, [16] * 4)])
def test_optimizer_steps_split_the_samples_evenly(samples, steps, sizes):
    """Rounding up gave 9 samples in 4 steps as 3/3/3/0: an update with no data behind it."""
    sequences = make_sequences(2 * samples, samples=samples)  # two sequences per sample
    slices = optimizer_step_slices(sequences, samples, steps)
    assert [len({sequences[i].sample_index for i in chosen}) for chosen in slices] == sizes
    assert sorted(i for chosen in slices for i in chosen) == list(range(2 * samples))


def test_a_resumed_trainer_takes_this_runs_optimizer_settings_and_keeps_the_schedules_position(tiny_model_dir):
    """The moments and the step come from the checkpoint; --lr, --weight-decay and Adam's settings from the new run."""
    first = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, lr=1e-3, lr_decay_style="linear", lr_decay_iters=10, min_lr=0.0), LossConfig())
    first.train_rollout(make_sequences(4), num_samples=4)
    new = TrainerConfig(bf16=False, lr=5e-4, lr_decay_style="linear", lr_decay_iters=10, min_lr=0.0, weight_decay=0.0, adam_beta2=0.95)
    resumed = TorchTrainer(tiny_model_dir, new, LossConfig())
    resumed.load_state_dict(first.state_dict())
    [group] = resumed.optimizer.param_groups
    assert group["lr"] == pytest.approx(5e-4 * 0.9) and (group["weight_decay"], group["betas"]) == (0.0, (0.9, 0.95))
    assert resumed.train_rollout(make_sequences(4), num_samples=4)["train/lr"] == pytest.approx(5e-4 * 0.9)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4 * 0.8)


def test_a_checkpoint_of_another_model_is_refused_naming_load(tiny_model_dir, tiny_llama_dir, tmp_path):
    from agentrl.checkpoint import LoopState, restore_checkpoint, save_checkpoint
    from agentrl.errors import ConfigError

    other = TorchTrainer(tiny_llama_dir, TrainerConfig(bf16=False), LossConfig())  # SmolLM2's vocabulary: another embedding shape
    checkpoint = save_checkpoint(tmp_path / "checkpoints", LoopState(step=1, data_position={"epoch": 0, "cursor": 0}), other.state_dict())
    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False), LossConfig())
    with pytest.raises(ConfigError, match=rf"--load {checkpoint}: its trainer state does not fit this run's model .*RuntimeError: Error\(s\) in loading"):
        restore_checkpoint(checkpoint, trainer.load_state_dict)


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
def test_metrics_of_trained_tokens_are_means_over_the_samples_a_step_kept(tiny_model_dir, per_token):
    """Zero-advantage samples are left out of the computation: the mismatch metric is the mean over the
    samples kept (it read kept/all of that), while pg_loss still averages over every sample of the step."""
    import dataclasses

    trainer = TorchTrainer(tiny_model_dir, TrainerConfig(bf16=False, calculate_per_token_loss=per_token), LossConfig())
    seqs = make_sequences(8)
    half_zero = [dataclasses.replace(s, advantages=[0.0] * len(s.advantages)) if s.sample_index < 4 else s for s in seqs]
    kept = [dataclasses.replace(s, sample_index=s.sample_index - 4) for s in seqs[4:]]
    mixed = trainer.accumulate_gradients(half_zero)
    trainer.optimizer.zero_grad(set_to_none=True)
    alone = trainer.accumulate_gradients(kept)
    assert mixed["train/train_rollout_logprob_abs_diff"] == pytest.approx(alone["train/train_rollout_logprob_abs_diff"], rel=1e-5)
    share = sum(sum(s.loss_mask) for s in kept) / sum(sum(s.loss_mask) for s in seqs) if per_token else 4 / 8
    assert mixed["train/pg_loss"] == pytest.approx(alone["train/pg_loss"] * share, rel=1e-5)
