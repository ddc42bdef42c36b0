"""Exact match and token F1 for short answers, with Search-R1's (SQuAD's) normalisation:
lower case, punctuation and the articles a/an/the removed, whitespace collapsed."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def _golds(label: str | Sequence[str]) -> list[str]:
    return [label] if isinstance(label, str) else [str(g) for g in label]


def exact_match(prediction: str, label: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(label)))


def contains_answer(text: str, label: str | Sequence[str]) -> bool:
    """Whether any normalised gold answer occurs in the normalised ``text`` as whole words
    (Search-R1's check of retrieved passages)."""
    haystack = f" {normalize_answer(text)} "
    return any(f" {gold} " in haystack for gold in map(normalize_answer, _golds(label)) if gold)


def f1_score(prediction: str, label: str | Sequence[str]) -> float:
    """Best token-level F1 of the normalised prediction against the gold answers."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golds(label):
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
