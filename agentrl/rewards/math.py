"""Math answer checking with Math-Verify (symbolic equivalence, not string rules).

The policy's answer is the content of its *last* ``\\boxed{...}``; it is parsed and compared with
the label by :mod:`math_verify` (``1/2``, ``0.5`` and ``\\frac{1}{2}`` are the same answer).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from latex2sympy2_extended import NormalizationConfig
from math_verify import LatexExtractionConfig, parse, verify

_BOXED = "\\boxed"
_BOXED_ONLY = [
    LatexExtractionConfig(
        boxed_match_priority=0,
        try_extract_without_anchor=False,
        normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True),
    )
]
TIMEOUT_S = 2
"""Bound on parsing and comparing one answer (pathological inputs such as 9^9^9 hang sympy)."""


@dataclass(frozen=True)
class MathScore:
    """The verdict on one response.

    Attributes:
        reward: 1.0 for a correct boxed answer, else 0.0.
        format_ok: the response has a ``\\boxed{}`` whose content parses as math and names no
            unknown the label does not (``\\boxed{ANSWER}`` or ``\\boxed{N}`` is a placeholder,
            not an answer, unless the label itself is in terms of ``N``).
        extracted: the parsed answer as text, or ``None``.
    """

    reward: float
    format_ok: bool
    extracted: str | None


def score_math_answer(response: str, label: str | int | float) -> MathScore:
    """Score ``response`` against ``label``: 1.0 iff its last ``\\boxed{}`` equals the label.

    Safe to call from any thread: Math-Verify's signal-based timeout is only used on the main
    thread (signals work nowhere else).
    """
    start = response.rfind(_BOXED)
    if start < 0:
        return MathScore(0.0, False, None)
    timeout = TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    answer = parse(response[start:], extraction_config=_BOXED_ONLY, parsing_timeout=timeout)
    if not answer:
        return MathScore(0.0, False, None)
    gold = parse(_as_latex(label), parsing_timeout=timeout)
    correct = bool(gold) and verify(gold, answer, timeout_seconds=timeout)
    well_formed = correct or _unknowns(answer) <= _unknowns(gold)
    return MathScore(1.0 if correct else 0.0, well_formed, str(answer[-1]))


def _unknowns(parsed: list[object]) -> set[str]:
    """Names of the free symbols in a Math-Verify parse (its first item is the sympy object)."""
    symbols = getattr(parsed[0], "free_symbols", set()) if parsed else set()
    return {str(symbol) for symbol in symbols}


def _as_latex(label: str | int | float) -> str:
    text = str(label).strip()
    return text if text.startswith("$") or _BOXED in text else f"${text}$"
