"""Our loss equals TRL 1.16's GRPO loss on the same tensors, where the two define the same thing.

TRL ``loss_type="grpo"`` (mean over sequences of each sequence's token mean) is our default
per-sample reduction; ``loss_type="dapo"`` (token mean over the batch) is our
``calculate_per_token_loss``. TRL's KL is k3 (``use_bias_correction_kl=False`` leaves it
unweighted, as ours). Both compute log-probs of ``logits / temperature`` with the same model.
"""

from __future__ import annotations

import pytest
import torch

from agentrl.trainers.algorithms import LossConfig, LossInputs, loss_weights, policy_loss
from agentrl.trainers.batching import TrainSequence, collate
from agentrl.trainers.torch_trainer import TorchTrainer, TrainerConfig

trl = pytest.importorskip("trl", reason="TRL is a test dependency (pip install -e '.[test]')")
TEMPERATURE = 0.7
PROMPT_LEN, COMPLETION_LEN = 6, 5
LENGTHS = [5, 3, 4, 2]  # valid completion tokens per sequence (the rest is right padding)


@pytest.fixture(scope="module")
def trl_trainer(smollm2_dir, tmp_path_factory):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def make(loss_type: str) -> GRPOTrainer:
        args = GRPOConfig(
            output_dir=str(tmp_path_factory.mktemp("trl")), use_cpu=True, bf16=False, loss_type=loss_type,
            beta=0.04, epsilon=0.2, epsilon_high=0.28, use_bias_correction_kl=False, temperature=TEMPERATURE,
            per_device_train_batch_size=4, num_generations=4, max_completion_length=COMPLETION_LEN,
            activation_checkpointing=False, report_to="none", save_strategy="no",
        )
        trainer = GRPOTrainer(model=str(smollm2_dir), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=Dataset.from_list([{"prompt": "hi"}] * 4))
        trainer.current_gradient_accumulation_steps = 1
        return trainer

    return make


@pytest.mark.parametrize(("loss_type", "per_token"), [("grpo", False), ("dapo", True)])
def test_same_loss_as_trl_grpo(trl_trainer, smollm2_dir, loss_type, per_token):
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 5000, (4, PROMPT_LEN), generator=gen)
    completion = torch.randint(100, 5000, (4, COMPLETION_LEN), generator=gen)
    completion_mask = torch.tensor([[1] * n + [0] * (COMPLETION_LEN - n) for n in LENGTHS])
    advantages = torch.tensor([1.0, -0.5, 0.25, -1.0])

    ours = TorchTrainer(smollm2_dir, TrainerConfig(bf16=False, temperature=TEMPERATURE), LossConfig())
    seqs = [TrainSequence(prompt[i].tolist() + completion[i, :n].tolist(), PROMPT_LEN, [1] * n, [0.0] * n, [float(advantages[i])] * n, i)
            for i, n in enumerate(LENGTHS)]
    current = ours.logprobs(seqs)
    # old and reference log-probs that differ from the current ones, so clipping and KL are exercised
    old = [lp + torch.linspace(-0.4, 0.4, len(lp)) for lp in current]
    ref = [lp - torch.linspace(0.3, -0.2, len(lp)) for lp in current]
    pad = lambda parts: torch.stack([torch.cat([p, torch.zeros(COMPLETION_LEN - len(p))]) for p in parts])  # noqa: E731

    trainer = trl_trainer(loss_type)
    inputs = {
        "prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
        "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": pad(old),
        "ref_per_token_logps": pad(ref), "num_items_in_batch": completion_mask.sum(),
    }
    trl_loss = trainer._compute_loss(trainer.model, inputs)

    batch = collate(seqs)
    counts = torch.tensor(LENGTHS, dtype=torch.float32)
    x = LossInputs(
        logp=torch.cat(current), old_logp=torch.cat(old), advantages=batch.advantages,
        weights=loss_weights(batch.loss_mask, batch.sample_index, counts, step_samples=4, step_tokens=sum(LENGTHS), per_token=per_token),
        sample_index=batch.local_index, ref_logp=torch.cat(ref),
    )
    our_loss, metrics = policy_loss(x, LossConfig(eps_clip=0.2, eps_clip_high=0.28, use_kl_loss=True, kl_loss_coef=0.04, kl_loss_type="k3"))
    assert metrics["pg_clipfrac"] > 0  # the clip is exercised
    assert our_loss.item() == pytest.approx(trl_loss.item(), abs=1e-5)
