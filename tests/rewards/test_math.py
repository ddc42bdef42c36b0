"""Math answers are checked symbolically by Math-Verify, from the last \\boxed{}."""

from __future__ import annotations

import threading

import pytest

from agentrl.rewards import score_math_answer


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
