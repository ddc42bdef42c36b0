"""The ``/generate`` body, parsed and checked in one place before any of it reaches the policy.

:func:`parse_generate` turns SGLang's ``GenerateReqInput`` (the subset RL rollouts use; see
``docs/integration-reference.md``) into a :class:`GenerateRequest`: one :class:`GenerateItem` per
prompt, with its token ids, request id and :class:`~agentrl.policies.base.SamplingParams`. Every
field is typed through the :class:`~agentrl.serving.bodies.Field` tables below (entries of lists
too, ``bool`` never passing as a number), every value through ``SamplingParams``'s own checks
(ranges, finiteness, non-empty stop strings, SGLang's signed 64-bit ``sampling_seed``), and the
request as a whole here: exactly one of ``text`` and ``input_ids``, token ids inside the
vocabulary, prompts within the model's context, one ``rid`` and one ``sampling_params`` per prompt
when lists are given, no request id twice. Anything wrong raises
:class:`~agentrl.serving.bodies.BadRequest` naming the field, what it must be and what arrived, so
one request's bad input is answered with a 400 at the edge and never fails an engine step that
other requests share.

``null`` stands for a field's default. SGLang options this server does not implement (penalties,
``min_p``, ``n`` > 1, constrained decoding, streaming, input log-probs...) are accepted only at
their no-op defaults; any other value is refused by name, never silently ignored.
Detokenisation-only options (``skip_special_tokens``, ``no_stop_trim``,
``spaces_between_special_tokens``, ``stream_interval``, ``custom_params``) are honoured or harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from agentrl.policies.base import SamplingParams, describe_value
from agentrl.serving.bodies import BadRequest, Field, parse_body

ENDPOINT = "generate"
GENERATE_FIELDS = {
    "text": Field((str, list), None, items=str),
    "input_ids": Field(list, None),  # ids or lists of ids: checked by _token_prompts
    "sampling_params": Field((dict, list), None, items=dict),
    "rid": Field((str, list), None, items=str),
    "return_logprob": Field(bool, False),
    "stream": Field(bool, False, neutral=True),
    "logprob_start_len": Field(int, -1, neutral=True),
    "top_logprobs_num": Field(int, 0, neutral=True),
    "token_ids_logprob": Field(list, None, neutral=True),
    "return_text_in_logprobs": Field(bool, False, neutral=True),
    "return_hidden_states": Field(bool, False, neutral=True),
    "return_routed_experts": Field(bool, False, neutral=True),
    "input_embeds": Field(list, None, neutral=True),
    "image_data": Field((str, list), None, neutral=True),
    "lora_path": Field((str, list), None, neutral=True),
    "custom_logit_processor": Field((str, list), None, neutral=True),
    "session_params": Field(dict, None, neutral=True),
    # sglang-router (0.3.x) adds these to every request it forwards
    "model": Field(str, None),
    "log_metrics": Field(bool, True),
    "no_logs": Field(bool, False),
    "background": Field(bool, False, neutral=True),
    "return_bytes": Field(bool, False, neutral=True),
    "return_entropy": Field(bool, False, neutral=True),
}
SAMPLING_FIELDS = {
    "max_new_tokens": Field(int, 128),
    "temperature": Field(float, 1.0),
    "top_p": Field(float, 1.0),
    "top_k": Field(int, -1),
    "stop": Field((str, list), None, items=str),
    "stop_token_ids": Field(list, None, items=int),
    "ignore_eos": Field(bool, False),
    "sampling_seed": Field(int, None),
    "skip_special_tokens": Field(bool, True),
    "no_stop_trim": Field(bool, False),
    "spaces_between_special_tokens": Field(bool, True),
    "stream_interval": Field(int, None),
    "custom_params": Field(dict, None),
    "min_p": Field(float, 0.0, neutral=True),
    "frequency_penalty": Field(float, 0.0, neutral=True),
    "presence_penalty": Field(float, 0.0, neutral=True),
    "repetition_penalty": Field(float, 1.0, neutral=True),
    "min_new_tokens": Field(int, 0, neutral=True),
    "n": Field(int, 1, neutral=True),
    "json_schema": Field(str, None, neutral=True),
    "regex": Field(str, None, neutral=True),
    "ebnf": Field(str, None, neutral=True),
    "structural_tag": Field(str, None, neutral=True),
    "stop_regex": Field((str, list), None, neutral=True),
    "logit_bias": Field(dict, None, neutral=True),
}


@dataclass(frozen=True)
class GenerateItem:
    """One prompt of a ``/generate`` request, ready for the policy.

    Attributes:
        input_ids: the prompt's token ids, each in the tokenizer's vocabulary. Shape ``[P]``.
        rid: its request id, unique among the request's items.
        sampling: how to sample it.
        skip_special_tokens: leave special tokens out of the answer's ``text``.
        no_stop_trim: keep a matched stop string at the end of ``text``.
    """

    input_ids: list[int]
    rid: str
    sampling: SamplingParams
    skip_special_tokens: bool
    no_stop_trim: bool


@dataclass(frozen=True)
class GenerateRequest:
    """A parsed ``/generate`` body: its items, whether it was a batch (answered with a list) and
    whether to return output log-probs."""

    items: list[GenerateItem]
    batched: bool
    return_logprob: bool


def parse_generate(
    body: Any, *, tokenizer: PreTrainedTokenizerBase, context_length: int | None, new_rid: Callable[[], str],
) -> GenerateRequest:
    """Parse and check a ``/generate`` body (see the module docstring).

    Args:
        body: the decoded JSON body.
        tokenizer: encodes ``text``; its length bounds token ids.
        context_length: the most tokens a prompt may have; ``None`` leaves it to the policy.
        new_rid: a fresh request id, for items the body gives none.

    Raises:
        BadRequest: anything in the body is missing, mistyped, out of range or inconsistent.
    """
    fields = parse_body(body, GENERATE_FIELDS, endpoint=ENDPOINT)
    prompts, batched = _prompts(fields, tokenizer, context_length)
    rids = _rids(fields["rid"], len(prompts), batched, new_rid)
    params = fields["sampling_params"]
    if isinstance(params, list):
        if len(params) != len(prompts):
            raise BadRequest(f"{ENDPOINT}: {len(params)} sampling_params for {_inputs(len(prompts))}")
        labelled = [(p, f"{ENDPOINT}: sampling_params[{i}]") for i, p in enumerate(params)]
    else:
        labelled = [(params or {}, f"{ENDPOINT}: sampling_params")] * len(prompts)
    items = [_item(ids, rid, p, where) for ids, rid, (p, where) in zip(prompts, rids, labelled)]
    return GenerateRequest(items, batched, fields["return_logprob"])


def _prompts(fields: dict[str, Any], tokenizer: PreTrainedTokenizerBase, context_length: int | None) -> tuple[list[list[int]], bool]:
    """The prompts' token ids and whether they came as a batch."""
    text, ids = fields["text"], fields["input_ids"]
    if (text is None) == (ids is None):
        raise BadRequest(f"{ENDPOINT}: give exactly one of 'text' and 'input_ids'")
    if text is not None:
        batched = isinstance(text, list)
        if batched and not text:
            raise BadRequest(f"{ENDPOINT}: 'text' is empty; give a string or a non-empty list of strings")
        prompts = [tokenizer.encode(t, add_special_tokens=False) for t in (text if batched else [text])]
    else:
        prompts, batched = _token_prompts(ids, len(tokenizer))
    for i, prompt in enumerate(prompts):
        if not prompt:
            raise BadRequest(f"{ENDPOINT}: prompt {i} is empty; give at least one token")
        if context_length is not None and len(prompt) > context_length:
            raise BadRequest(f"{ENDPOINT}: the input ({len(prompt)} tokens) is longer than the model's context length "
                             f"({context_length} tokens)")
    return prompts, batched


def _token_prompts(ids: list[Any], vocab: int) -> tuple[list[list[int]], bool]:
    """``input_ids`` as a list of prompts (one for a flat list of ids), every id checked."""
    if not ids:
        raise BadRequest(f"{ENDPOINT}: 'input_ids' is empty; give a list of token ids or a list of such lists")
    batched = isinstance(ids[0], list)
    if any(isinstance(t, list) != batched for t in ids):
        raise BadRequest(f"{ENDPOINT}: 'input_ids' mixes token ids and lists; give a list of token ids or a list of such lists")
    prompts = ids if batched else [ids]
    for prompt in prompts:
        for token in prompt:
            if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < vocab:
                raise BadRequest(f"{ENDPOINT}: 'input_ids' must hold token ids (integers in [0, {vocab})), got {describe_value(token)}")
    return prompts, batched


def _rids(rid: str | list[str] | None, n: int, batched: bool, new_rid: Callable[[], str]) -> list[str]:
    """One request id per prompt: the given list, a string (``rid_i`` for a batch, as SGLang), or fresh ones."""
    if rid is None:
        return [new_rid() for _ in range(n)]
    if isinstance(rid, str):
        return [f"{rid}_{i}" for i in range(n)] if batched else [rid]
    if len(rid) != n:
        raise BadRequest(f"{ENDPOINT}: 'rid' has {len(rid)} entries for {_inputs(n)}; give one per input")
    seen: set[str] = set()
    for r in rid:
        if r in seen:
            raise BadRequest(f"{ENDPOINT}: 'rid' {r!r} is given twice; request ids must be unique")
        seen.add(r)
    return rid


def _item(input_ids: list[int], rid: str, params: Any, where: str) -> GenerateItem:
    values = parse_body(params, SAMPLING_FIELDS, endpoint=where)
    stop = values["stop"]
    try:
        sampling = SamplingParams(
            max_new_tokens=values["max_new_tokens"], temperature=values["temperature"], top_p=values["top_p"],
            top_k=values["top_k"], stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
            stop_token_ids=tuple(values["stop_token_ids"] or ()), ignore_eos=values["ignore_eos"], seed=values["sampling_seed"],
        )
    except ValueError as e:
        raise BadRequest(f"{where}: {e}") from None
    return GenerateItem(input_ids, rid, sampling, values["skip_special_tokens"], values["no_stop_trim"])


def _inputs(n: int) -> str:
    return "1 input" if n == 1 else f"{n} inputs"
