"""A scripted policy for unit-testing envs and the runner without a model.

It answers each turn with a scripted text, encoded with a real tokenizer and followed by the
tokenizer's eos token, so trajectories look exactly as they would with a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from agentrl.envs.core import FinishReason
from agentrl.policies.base import Generation, Policy, SamplingParams

Script = Callable[[int, str], str]
"""``script(turn, context_text) -> reply``: ``turn`` counts from 0 within the episode."""


class ScriptedPolicy(Policy):
    """Replies from a script instead of a model.

    Args:
        tokenizer: the tokenizer whose ids the replies are encoded to.
        script: a list of replies (turn ``k`` gets ``replies[k]``, the last one repeats), or a
            callable ``(turn, context_text) -> reply``.
        logprob: the log-prob reported for every token.

    The turn number is read from the request id the rollout runner sends (``<episode>:<turn>``);
    without one, the reply for turn 0 is used.
    """

    def __init__(self, tokenizer: Any, script: Sequence[str] | Script, *, logprob: float = -0.5) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.logprob = logprob
        self.requests = 0

    async def generate(self, input_ids: Sequence[int], sampling: SamplingParams, *, rid: str | None = None) -> Generation:
        self.requests += 1
        turn = int(rid.rsplit(":", 1)[1]) if rid and ":" in rid else 0
        if callable(self.script):
            reply = self.script(turn, self.tokenizer.decode(list(input_ids)))
        else:
            reply = self.script[min(turn, len(self.script) - 1)]
        ids = self.tokenizer.encode(reply, add_special_tokens=False)
        finish: FinishReason = "stop"
        matched: int | None = None
        if len(ids) >= sampling.max_new_tokens:
            ids, finish = ids[: sampling.max_new_tokens], "length"
        elif not sampling.ignore_eos and self.tokenizer.eos_token_id is not None:
            ids = ids + [self.tokenizer.eos_token_id]
            matched = self.tokenizer.eos_token_id
        return Generation(ids, [self.logprob] * len(ids), finish, matched_stop=matched)

    async def abort(self, rid: str) -> bool:
        """Aborts nothing: a scripted reply is complete the moment it is asked for, so no request
        is ever in flight. Returns False."""
        return False
