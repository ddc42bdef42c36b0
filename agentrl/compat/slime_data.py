"""slime's data flags that shape which tasks a run reads: ``--eval-input-key`` /
``--eval-label-key`` (the eval datasets' own fields) and ``--rollout-max-prompt-len`` (training
prompts longer than that many tokens, rendered, are left out when the run starts, as slime's
``Dataset`` does). ``PATH@[start:end]`` row slices are read by :func:`agentrl.data.load_tasks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from transformers import PreTrainedTokenizerBase

from agentrl.data import TaskKeys
from agentrl.envs.core import Task
from agentrl.errors import DataError

log = logging.getLogger(__name__)


class KeyOptions(Protocol):
    """The data-key flags (``TrainConfig`` has them)."""

    @property
    def input_key(self) -> str: ...

    @property
    def label_key(self) -> str | None: ...

    @property
    def metadata_key(self) -> str: ...

    @property
    def eval_input_key(self) -> str | None: ...

    @property
    def eval_label_key(self) -> str | None: ...


def eval_task_keys(cfg: KeyOptions) -> TaskKeys:
    """The fields the eval datasets are read with: ``--eval-input-key`` / ``--eval-label-key``
    where given, else the training ones."""
    return TaskKeys(cfg.eval_input_key or cfg.input_key, cfg.label_key if cfg.eval_label_key is None else cfg.eval_label_key, cfg.metadata_key)


def drop_long_prompts(tasks: Sequence[Task], max_len: int | None, prompt_tokens: Callable[[Task], int], *, where: str) -> list[Task]:
    """The tasks whose rendered prompt has at most ``max_len`` tokens (all of them for ``None``);
    the count left out is logged.

    Raises:
        DataError: every task is longer (``where`` names the data file).
    """
    if max_len is None:
        return list(tasks)
    kept = [t for t in tasks if prompt_tokens(t) <= max_len]
    if not kept:
        raise DataError(f"{where}: every prompt is longer than --rollout-max-prompt-len {max_len} tokens")
    if len(kept) < len(tasks):
        log.warning("%s: left out %d of %d prompts longer than --rollout-max-prompt-len %d tokens", where, len(tasks) - len(kept), len(tasks), max_len)
    return kept


def prompt_token_counter(tokenizer: PreTrainedTokenizerBase, *, apply_chat_template: bool) -> Callable[[Task], int]:
    """Counts a task's prompt tokens as slime's ``--rollout-max-prompt-len`` filter does: the chat
    template applied (generation prompt added) with ``--apply-chat-template``, the text as it is
    without (a list of messages then counts its contents joined)."""

    def count(task: Task) -> int:
        messages = [{"role": "user", "content": task.prompt}] if isinstance(task.prompt, str) else list(task.prompt)
        if apply_chat_template:
            return len(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
        return len(tokenizer.encode("".join(str(m["content"]) for m in messages), add_special_tokens=False))

    return count
