"""One packed micro-batch through a Megatron ``GPTModel``: decoder, then the chunked LM head.

The decoder is driven through the model's public parts (``embedding``, ``decoder``,
``output_layer``) rather than ``GPTModel.forward``, for two reasons: the LM head must not
produce ``[T, V]`` logits (log-probs are taken chunk by chunk, at the predicting positions only),
and rotary embeddings must follow the micro-batch's position ids (runs that reuse a shared prompt
start at the prompt's length, not at 0): one frequency row per token, the packed row passed to
Megatron as one ``sbhd`` sequence (see :mod:`agentrl.trainers.megatron.attention`).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from agentrl.trainers.batching import MicroBatch
from agentrl.trainers.megatron.attention import PackedRows, rotary_frequencies
from agentrl.trainers.megatron.logprobs import sharded_logprobs
from agentrl.trainers.megatron.mcore import GPTModel, parallel_state, tensor_parallel
from agentrl.trainers.packed_attention import attention_layout, cumulative_lengths


def pad_row(batch: MicroBatch, multiple: int) -> MicroBatch:
    """``batch`` with padding tokens (id 0, a run of their own that nothing reads) appended so that
    its length is a multiple of ``multiple`` (sequence parallelism splits the row evenly)."""
    pad = -batch.num_tokens % multiple
    if not pad:
        return batch
    layout, total = batch.layout, batch.num_tokens
    starts = layout.query_index[:, 0].tolist()
    runs = [(s, s + n) for s, n in zip(starts, layout.lengths.tolist())] + [(total, total + pad)]
    prefixes = [(int(k[0]) if p else s, p) for k, s, p in zip(layout.key_index, starts, layout.prefix_lengths.tolist())] + [(total, 0)]
    device = batch.input_ids.device
    return dataclasses.replace(
        batch,
        input_ids=torch.cat((batch.input_ids, batch.input_ids.new_zeros(1, pad)), dim=1),
        position_ids=torch.cat((batch.position_ids, torch.arange(pad, device=device)[None]), dim=1),
        cu_seq_lens=cumulative_lengths([end - start for start, end in runs], device),
        max_length=max(batch.max_length, pad),
        layout=attention_layout(runs, prefixes).to(device),
    )


def decoder_output(model: GPTModel, batch: MicroBatch) -> Tensor:
    """This pipeline stage's output for ``batch``: ``[T, 1, H]`` hidden states (after the final
    norm on the last stage; ``[T / tp, 1, H]`` under sequence parallelism). Stages after the first
    read their input from the schedule (``set_input_tensor``)."""
    embedded = model.embedding(input_ids=batch.input_ids, position_ids=batch.position_ids) if model.pre_process else None
    inv_freq = model.rotary_pos_emb.inv_freq.to(batch.position_ids.device)
    freqs = rotary_frequencies(inv_freq, batch.position_ids[0])
    hidden: Tensor = model.decoder(hidden_states=embedded, attention_mask=None, rotary_pos_emb=freqs, packed_seq_params=PackedRows.of(batch))
    return hidden


def head_logprobs(model: GPTModel, hidden: Tensor, batch: MicroBatch, *, vocab_size: int, temperature: float,
                  with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
    """Log-probs (and entropies) ``[N]`` of ``batch.targets`` at ``batch.pred_index`` from the last
    stage's ``hidden`` (see :func:`decoder_output`), with the vocabulary sharded across the
    tensor-parallel ranks."""
    group = parallel_state.get_tensor_model_parallel_group()
    if model.config.sequence_parallel:
        hidden = tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True, group=group)
        chosen = hidden[:, 0][batch.pred_index]
    else:  # each rank's vocabulary shard adds its part of the gradient: summed in backward
        chosen = tensor_parallel.copy_to_tensor_model_parallel_region(hidden[:, 0][batch.pred_index], group=group)
    weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else model.output_layer.weight
    return sharded_logprobs(
        chosen, weight, batch.targets, vocab_start=parallel_state.get_tensor_model_parallel_rank() * weight.shape[0],
        vocab_size=vocab_size, group=group if parallel_state.get_tensor_model_parallel_world_size() > 1 else None,
        temperature=temperature, with_entropy=with_entropy,
    )
