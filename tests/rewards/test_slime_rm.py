"""slime's built-in scorers (``--rm-type deepscaler``, ``dapo``, ``slime_math``, ``slime_f1``,
``remote_rm``) on cases written by hand. Each expected value is what slime's own function
(``slime/rollout/rm_hub/`` at slime 624b824: ``math_utils.grade_answer_verl``,
``deepscaler.get_deepscaler_rule_based_reward``, ``math_dapo_utils.compute_score`` and
``normalize_final_answer``, ``f1.f1_score``) returned for the same input."""

from __future__ import annotations

import pytest
from aiohttp import web

from agentrl.compat.slime_args import slime_namespace
from agentrl.compat.slime_types import Sample
from agentrl.errors import ConfigError, EnvError
from agentrl.rewards.dapo import dapo_score, normalize_final_answer
from agentrl.rewards.hendrycks import deepscaler_reward, grade_answer_verl
from agentrl.rewards.hub import RewardInput, SlimeReward, make_reward_fn
from agentrl.rewards.slime_rm import reward_value, score_rm_type, slime_f1
from tests.http import serve

SLIME_MATH = [
    ('so \\boxed{12}', '12', True),
    ('\\boxed{\\frac{1}{2}}', '0.5', True),
    ('\\boxed{0.5}', '\\frac12', True),
    ('\\boxed{1/2}', '\\frac{1}{2}', True),
    ('\\boxed{2/4}', '\\frac{1}{2}', False),
    ('\\boxed{x^2+2x+1}', '(x+1)^2', True),
    ('\\boxed{10}', '10.0', True),
    ('\\boxed{1,000}', '1000', True),
    ('\\boxed{(1,2)}', '(1, 2)', True),
    ('\\boxed{(1,2)}', '[1,2]', False),
    ('\\boxed{\\text{Paris}}', 'paris', True),
    ('\\boxed{90^\\circ}', '90', True),
    ('\\boxed{3\\sqrt2}', '3\\sqrt{2}', True),
    ('no box 12', '12', False),
    ('\\boxed{12}', '\\boxed{12}', True),
    ('\\boxed{12}', '', False),
    ('\\boxed{12}', 12, True),
    ('\\boxed{5 \\text{ cm}}', '5', True),
    ('\\fbox{7}', '7', False),
    ('\\boxed{2^{10}}', '1024', False),
    ('\\boxed{\\dfrac{3}{4}}', '\\frac{3}{4}', True),
    ('\\boxed{k = 3}', '3', True),
    ('\\boxed{.5}', '0.5', True),
    ('\\boxed{\\pi}', '\\pi', True),
    ('\\boxed{2\\pi}', '6.283185307', False),
    ('\\boxed{x^{99}}', 'x^{99}+0', False),
]
DEEPSCALER = [
    ('<think>hmm</think> so \\boxed{12}', '12', 1),
    ('so \\boxed{12}', '12', 0),
    ('###Response the answer is \\boxed{4}', '4', 1),
    ('</think>\\boxed{\\frac{1}{2}}', '\\boxed{0.5}', 1),
    ('</think>no box', '3', 0),
    ('</think>\\boxed{3}', '', 0),
    ('</think>\\boxed{3}', 3, 1),
    ('</think>\\boxed{3}', 3.0, 1),
    ('a</think>b</think>\\boxed{9}', '9', 1),
]
DAPO = [
    ('Answer: 12', '12', {'score': 1.0, 'acc': True, 'pred': '12'}),
    ('blah\nAnswer: 1,234\n', '1234', {'score': 1.0, 'acc': True, 'pred': '1234'}),
    ('Answer: $\\boxed{34}$', '34', {'score': 1.0, 'acc': True, 'pred': '34'}),
    ('answer : 5 dollars', '5', {'score': 1.0, 'acc': True, 'pred': '5'}),
    ('Answer: x = 7', '7', {'score': 1.0, 'acc': True, 'pred': '7'}),
    ('no answer line', '7', {'score': -1.0, 'acc': False, 'pred': '[INVALID]'}),
    ('Answer: 7\nAnswer: 8', '8', {'score': 1.0, 'acc': True, 'pred': '8'}),
    ('Answer: \\frac12', '0.5', {'score': -1.0, 'acc': False, 'pred': '\\frac{1}{2}'}),
]
DAPO_STRICT = [
    ('... Answer: \\boxed{12}', '12', {'score': 1.0, 'acc': True, 'pred': '12'}),
    ('\\boxed{12} xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', '12', {'score': -1.0, 'acc': False, 'pred': None}),
    ('\\boxed{ 12}', '12', {'score': -1.0, 'acc': False, 'pred': ' 12'}),
]
MINERVA_NORMALISATION = [
    ('\\text{5 inches}', '5'),
    ('$\\boxed{1,000}$', '1000'),
    ('x = \\frac34', '\\frac{3}{4}'),
    ('\\sqrt2', '\\sqrt{2}'),
    ('10 students', '10'),
    ('\\overline{12}', '12'),
]
SLIME_F1 = [
    ('Paris France', 'Paris', 0.6666666666666666),
    ('yes', 'no', 0),
    ('yes', 'yes', 1.0),
    ('The answer is no', 'no', 0),
    ('London', 'Paris', 0),
    (None, 'x', 0),
]


@pytest.mark.parametrize(("response", "label", "correct"), SLIME_MATH)
def test_slime_math_grades_as_slime(response, label, correct):
    assert grade_answer_verl(response, label) is correct


@pytest.mark.parametrize(("response", "label", "reward"), DEEPSCALER)
def test_deepscaler_scores_as_slime(response, label, reward):
    assert deepscaler_reward(response, label) == reward


def test_deepscaler_refuses_a_label_that_is_not_text_or_a_number():
    with pytest.raises(TypeError, match="needs a string or number label, got list"):
        deepscaler_reward("</think>\\boxed{3}", ["3"])


@pytest.mark.parametrize(("response", "label", "score"), DAPO)
def test_dapo_scores_as_slime(response, label, score):
    assert dapo_score(response, label) == score


@pytest.mark.parametrize(("response", "label", "score"), DAPO_STRICT)
def test_dapo_strict_box_scores_as_slime(response, label, score):
    assert dapo_score(response, label, strict_box_verify=True) == score


@pytest.mark.parametrize(("answer", "normalised"), MINERVA_NORMALISATION)
def test_minerva_normalisation_as_slime(answer, normalised):
    assert normalize_final_answer(answer) == normalised


@pytest.mark.parametrize(("prediction", "gold", "f1"), SLIME_F1)
def test_slime_f1_as_slime(prediction, gold, f1):
    assert slime_f1(prediction, gold)[0] == pytest.approx(f1)


@pytest.mark.parametrize(
    ("rm_type", "response", "label", "raw"),
    [("deepscaler", "<think>x</think>\\boxed{4}", "4", 1), ("boxed_slime_f1", "so \\boxed{Paris France}", "Paris", pytest.approx(2 / 3)),
     ("slime_math", "\\boxed{0.5}", "\\frac12", 1), ("dapo", "Answer: 3", "3", {"score": 1.0, "acc": True, "pred": "3"}),
     ("boxed_deepscaler", "</think>\\boxed{4}", "4", 0)],  # slime unboxes first: "4" has no </think> left
)
async def test_rm_types_score_the_sample(rm_type, response, label, raw):
    args = slime_namespace({"rm_type": rm_type})
    assert await score_rm_type(args, Sample(response=response, label=label)) == raw


async def test_the_sample_metadata_rm_type_wins_and_an_unknown_one_is_named():
    args = slime_namespace({"rm_type": "dapo"})
    assert await score_rm_type(args, Sample(response="</think>\\boxed{2}", label="2", metadata={"rm_type": "deepscaler"})) == 1
    with pytest.raises(ConfigError, match="'gpqa' is not one of slime's scorers"):
        await score_rm_type(slime_namespace({"rm_type": "gpqa"}), Sample())


def test_reward_value_reads_the_reward_key():
    assert reward_value({"score": -1.0, "acc": False}, "score", source="x") == -1.0
    assert reward_value(3, None, source="x") == 3.0
    with pytest.raises(EnvError, match="name the number to train on with --reward-key"):
        reward_value({"score": 1.0}, None, source="--rm-type dapo")
    with pytest.raises(EnvError, match="has no key 'reward' \\(--reward-key\\)"):
        reward_value({"score": 1.0}, "reward", source="x")
    with pytest.raises(EnvError, match="expected a finite number"):
        reward_value({"score": float("nan")}, "score", source="x")


async def test_rm_type_dapo_through_the_hub_trains_on_the_reward_key():
    fn = make_reward_fn("dapo", args=slime_namespace({"rm_type": "dapo", "reward_key": "score"}))
    assert isinstance(fn, SlimeReward)
    assert await fn(RewardInput("q", "Answer: 5", "5", {})) == 1.0
    assert await fn(RewardInput("q", "Answer: 6", "5", {})) == -1.0


async def test_remote_rm_posts_prompt_response_label_and_keeps_the_reply():
    seen = []

    async def handler(request):
        seen.append(await request.json())
        return web.json_response({"score": 0.25, "detail": "ok"})

    async with serve("/rm", handler) as url:
        args = slime_namespace({"rm_type": "remote_rm", "rm_url": url, "reward_key": "score"})
        sample = Sample(prompt="p", response="r", label={"answer": 1})
        assert await score_rm_type(args, sample) == {"score": 0.25, "detail": "ok"}
        fn = make_reward_fn("remote_rm", rm_url=url, args=args)
        assert await fn(RewardInput("p", "r", "l", {})) == 0.25
    assert seen[0] == {"prompt": "p", "response": "r", "label": {"answer": 1}}
    with pytest.raises(ConfigError, match="--rm-type remote_rm needs --rm-url"):
        make_reward_fn("remote_rm")
