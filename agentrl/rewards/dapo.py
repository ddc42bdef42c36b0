"""DAPO's math scoring as slime's ``--rm-type dapo`` does it (``slime/rollout/rm_hub/math_dapo_utils.py``
at slime 624b824, after Minerva and lm-evaluation-harness): the last ``Answer: ...`` line of the
response's final 300 characters, normalised, equals the label as an integer (DAPO-Math's labels
are integers). The score is a dict, ``{"score": 1.0 | -1.0, "acc": bool, "pred": str | None}``:
train on it with ``--reward-key score``.
"""

from __future__ import annotations

import re
from typing import Any

SUBSTITUTIONS = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
)
"""Applied in order by :func:`normalize_final_answer`."""
REMOVED_EXPRESSIONS = (
    "square", "ways", "integers", "dollars", "mph", "inches", "hours", "km", "units", "\\ldots", "sue", "points", "feet", "minutes",
    "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}",
    "\\;", ",\\!", "{,}", '"', "\\dots", "<|im_end|>", "<|endoftext|>",
)
"""Deleted in order by :func:`normalize_final_answer`."""
ANSWER_LINE = re.compile(r"(?i)Answer\s*:\s*([^\n]+)")


def normalize_final_answer(answer: Any) -> str:
    """Minerva's normalisation of a final answer: the part after the last ``=``, units and
    filler words removed, ``$...$``, ``\\text{}``, ``\\textbf{}``, ``\\overline{}`` and
    ``\\boxed{}`` unwrapped, ``\\fracab`` / ``\\sqrta`` shorthand expanded, digit grouping dropped."""
    text = str(answer).split("=")[-1]
    for before, after in SUBSTITUTIONS:
        text = text.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        text = text.replace(expression, "")
    text = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", text)
    for command in ("text", "textbf", "overline"):
        text = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", text)
    text = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", text)
    text = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", text)
    text = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", text).replace("$", "")
    if text.replace(",", "").isdigit():
        text = text.replace(",", "")
    return text.strip()


def last_boxed_only(text: str) -> str | None:
    """The last ``\\boxed{...}`` with balanced braces (``\\fbox`` not considered), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            return text[start : i + 1]
    return None


def _minerva(solution: str, label: Any) -> tuple[bool, str]:
    """Raises ValueError for a label that is not a number (slime's ``int(float(gt))``)."""
    lines = ANSWER_LINE.findall(solution)
    prediction = normalize_final_answer(lines[-1] if lines else "[INVALID]")
    truth = str(int(float(normalize_final_answer(label))))
    return prediction == truth, prediction


def _strict_box(solution: str, label: Any) -> tuple[bool, str | None]:
    boxed = last_boxed_only(solution[-100:])
    prediction = boxed[len("\\boxed{") : -1] if boxed is not None else None
    return prediction == label, prediction


def dapo_score(solution: str, label: Any, strict_box_verify: bool = False) -> dict[str, Any]:
    """slime's ``compute_score``: ``{"score": 1.0 or -1.0, "acc": correct, "pred": the answer read}``.
    With ``strict_box_verify`` the answer is the last ``\\boxed{}`` of the final 100 characters,
    compared with the label as it is.

    Raises:
        ValueError: without ``strict_box_verify``, a label that is not a number.
    """
    solution = solution[-300:]
    correct, prediction = _strict_box(solution, label) if strict_box_verify else _minerva(solution, label)
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": prediction}
