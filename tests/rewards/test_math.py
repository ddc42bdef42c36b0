"""Math answers are checked symbolically by Math-Verify, from the last \\boxed{}."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agentrl.rewards import MathScore, score_math_answer

PATHOLOGICAL = "\\boxed{9^{9^{9}}}"
"""sympy works on this for minutes, holding the GIL; only Math-Verify's SIGALRM (main thread) or a kill stops it."""


@pytest.mark.parametrize(
    ("response", "label", "reward", "format_ok"),
    [
        ("So the total is \\boxed{12}.", "12", 1.0, True),
        ("\\boxed{0.5}", "1/2", 1.0, True),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0, True),
        ("First \\boxed{3}, no wait: \\boxed{4}", "4", 1.0, True),
        ("First \\boxed{4}, no wait: \\boxed{3}", "4", 0.0, True),
        ("\\boxed{13}", 12, 0.0, True),
        ("The answer is 12", "12", 0.0, False),  # right number, but not boxed
        ("\\boxed{}", "12", 0.0, False),
        ("The answer is \\boxed{ANSWER}.", "12", 0.0, False),  # a placeholder, not an answer
        ("\\boxed{x + 2}", "x + 1", 0.0, True),  # wrong, but in the label's own unknown
        ("\\boxed{y + 1}", "x + 1", 0.0, False),
    ],
)
def test_scores(response, label, reward, format_ok):
    score = score_math_answer(response, label)
    assert (score.reward, score.format_ok) == (reward, format_ok)


def test_works_off_the_main_thread():
    out = []
    thread = threading.Thread(target=lambda: out.append(score_math_answer("\\boxed{7}", "7")))
    thread.start()
    thread.join()
    assert out[0].reward == 1.0


async def test_a_scorer_out_of_time_scores_zero_and_replaces_its_worker(caplog):
    from agentrl.rewards.math import MathScorer

    scorer = MathScorer(workers=1, timeout_s=0.5)
    try:
        assert (await scorer.score("\\boxed{7}", "7")).reward == 1.0  # the worker is up
        started = time.perf_counter()
        score = await scorer.score(PATHOLOGICAL, "1")
        assert time.perf_counter() - started < 1.5, "Math-Verify's own 2 s timeout ended it, not the scorer's"
        assert score == MathScore(0.0, False, None, timed_out=True)
        assert "timed out after 0.5 s" in caplog.text and "9^{9^{9}}" in caplog.text
        assert (await scorer.score("\\boxed{\\frac{1}{2}}", "0.5")).reward == 1.0  # on a fresh worker
    finally:
        scorer.close()


async def test_a_scorer_scores_concurrent_answers_each_against_its_own_label():
    from agentrl.rewards.math import MathScorer

    scorer = MathScorer(workers=2)
    try:
        scores = await asyncio.gather(*(scorer.score(f"so \\boxed{{{n}}}", n if n % 3 else n + 1) for n in range(8)))
        assert [s.reward for s in scores] == [0.0 if n % 3 == 0 else 1.0 for n in range(8)]
        assert [s.extracted for s in scores] == [str(n) for n in range(8)]
    finally:
        scorer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await scorer.score("\\boxed{1}", "1")
