"""The policy contract itself: SamplingParams refuses what no engine step can serve, and
``Policy.abort`` is declared, awaited, and explicit where a backend cannot abort."""

from __future__ import annotations

import math

import pytest

from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.policies.scripted import ScriptedPolicy


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": math.nan}, "temperature must be a finite number >= 0, got float nan"),
    ({"temperature": math.inf}, "temperature must be a finite number >= 0, got float inf"),
    ({"temperature": "0.5"}, "temperature must be a finite number >= 0, got str '0.5'"),
    ({"top_p": math.nan}, r"top_p must be a finite number in \(0, 1\], got float nan"),
    ({"max_new_tokens": math.inf}, "max_new_tokens must be an integer >= 0, got float inf"),
    ({"max_new_tokens": True}, "max_new_tokens must be an integer >= 0, got bool True"),
    ({"top_k": 2.5}, "top_k must be an integer, -1 .all. or >= 1, got float 2.5"),
    ({"stop": "</a>"}, "stop must be a tuple of strings, got one string '</a>'"),
    ({"stop": ("",)}, "stop must hold non-empty strings, got str ''"),
    ({"stop": (5,)}, "stop must hold non-empty strings, got int 5"),
    ({"stop": (["a"],)}, r"stop must hold non-empty strings, got list \['a'\]"),
    ({"stop_token_ids": (True,)}, "stop_token_ids must hold integers >= 0, got bool True"),
    ({"stop_token_ids": ([1],)}, r"stop_token_ids must hold integers >= 0, got list \[1\]"),
    ({"stop_token_ids": (-3,)}, "stop_token_ids must hold integers >= 0, got int -3"),
    ({"ignore_eos": "false"}, "ignore_eos must be a boolean, got str 'false'"),
    ({"seed": "7"}, r"seed \(SGLang's sampling_seed\) must be an integer in \[-2\*\*63, 2\*\*63\), got str '7'"),
    ({"seed": 2**63}, r"seed \(SGLang's sampling_seed\) must be an integer in \[-2\*\*63, 2\*\*63\), got int 9223372036854775808"),
])
def test_sampling_params_refuse_what_an_engine_step_cannot_serve(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)


def test_sampling_params_accept_the_edges_of_their_ranges():
    SamplingParams(max_new_tokens=0, temperature=0, top_p=1, top_k=-1, stop=["</a>"], stop_token_ids=[0], seed=-(2**63))
    SamplingParams(top_k=1, seed=2**63 - 1)


class _NoAbort(Policy):
    async def generate(self, input_ids, sampling, *, rid=None):
        return Generation([], [], "length")


async def test_a_policy_that_cannot_abort_says_so_explicitly():
    policy = _NoAbort()
    assert policy.can_abort is False
    with pytest.raises(NotImplementedError, match="_NoAbort cannot abort requests"):
        await policy.abort("r")


async def test_the_scripted_policy_aborts_nothing_and_says_so(tokenizer):
    policy = ScriptedPolicy(tokenizer, ["hi"])
    assert policy.can_abort is True
    assert await policy.abort("unknown") is False
