"""Rule-based math grading as slime's ``--rm-type deepscaler`` and ``--rm-type math`` do it
(``slime/rollout/rm_hub/math_utils.py`` and ``deepscaler.py`` at slime 624b824, which follow
DeepScaleR and Hendrycks' MATH): the last ``\\boxed{}`` answer is correct when it equals the
label after MATH's string normalisation, or when sympy finds the difference of the two
(normalised again and parsed from LaTeX) simplifies to 0.

Behaviour kept from slime, on purpose: an integer label needs an answer that is the same
integer (no symbolic equivalence); unreduced fractions must match as written; expressions with
more than two unknown letters, or exponents of two or more digits, are not handed to sympy (it
may hang on them). Everything here is synchronous and may take a while on odd input (sympy):
call it off the event loop.
"""

from __future__ import annotations

import re
from typing import Any

import sympy
from pylatexenc import latex2text
from sympy.parsing import sympy_parser

_TEXT = re.compile(r"^\\text\{(?P<text>.+?)\}$")
_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month", "year", "foot", "feet", "inch", "yard")
_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_PATTERNS = (re.compile(r"\^[0-9]+\^"), re.compile(r"\^[0-9][0-9]+"))
_TUPLE_CHARS = "()[]"
_GROUPED_DIGITS = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
_FRACTION = re.compile(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$")


# ---------------------------------------------------------------------- boxed answers
def last_boxed(text: str) -> str | None:
    """The last ``\\boxed...`` (or, with none, ``\\fbox...``) up to its balanced closing brace,
    command included; ``None`` if there is none or it never closes."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            return text[start : i + 1]
    return None


def unbox(boxed: str | None) -> str | None:
    """The content of ``\\boxed{...}``; ``None`` for anything else."""
    if boxed is None or not boxed.startswith("\\boxed{") or not boxed.endswith("}"):
        return None
    return boxed[len("\\boxed{") : -1]


def extract_answer(passage: str) -> str | None:
    """The content of the passage's last ``\\boxed{}``, or ``None`` when it has no ``\\boxed``."""
    return unbox(last_boxed(passage)) if "\\boxed" in passage else None


# ---------------------------------------------------------------------- MATH's string normalisation
def mathd_normalize(answer: str | None) -> str | None:
    """Hendrycks' MATH normalisation (spacing, ``\\left``, degrees, units, fractions ...); on an
    answer it cannot handle, the answer stripped (and unwrapped from ``\\text{}``)."""
    if answer is None:
        return None
    answer = answer.strip()
    try:
        if (m := _TEXT.search(answer)) is not None:
            answer = m.group("text").strip()
        return _strip_string(answer)
    except (AssertionError, IndexError):
        return answer


def _strip_string(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "").replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _remove_right_units(s).replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:
        s = parts[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def _remove_right_units(s: str) -> str:
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise AssertionError("more than one \\text{ unit}")  # MATH gives up on such answers
    return parts[0]


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    head, *tails = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (tail if tail[0] == "{" else "{" + tail[0] + "}" + tail[1:]) for tail in tails)


def _fix_fracs(s: str) -> str:
    head, *tails = s.split("\\frac")
    out = head
    for tail in tails:
        out += "\\frac"
        if tail[0] == "{":
            out += tail
            continue
        if len(tail) < 2:
            return s
        a, b, rest = tail[0], tail[1], tail[2:]
        out += "{" + a + "}{" + b + "}" + rest if b != "{" else "{" + a + "}" + b + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def grade_mathd(given: str | None, truth: str | None) -> bool:
    """Equal after MATH's normalisation."""
    return mathd_normalize(truth) == mathd_normalize(given)


# ---------------------------------------------------------------------- sympy equivalence
def grade_sympy(given: str, truth: str) -> bool:
    """Equal after DeepScaleR's normalisation, element by element for tuples and intervals, by
    string for fractions and integers and by sympy otherwise."""
    truth_n, given_n = sympy_normalize(truth), sympy_normalize(given)
    if truth_n is None or given_n is None:
        return False
    if truth_n == given_n:
        return True
    if not given_n:
        return False
    truth_items, given_items = _split_tuple(truth_n), _split_tuple(given_n)
    if len(truth_items) > 1 and (truth_n[0] != given_n[0] or truth_n[-1] != given_n[-1]):
        return False
    if len(truth_items) != len(given_items):
        return False
    return all(_same_item(t, g) for t, g in zip(truth_items, given_items))


def _same_item(truth: str, given: str) -> bool:
    if _FRACTION.search(truth) and _FRACTION.search(given):
        return truth == given  # unreduced fractions are not equivalent answers
    if _str_is_int(truth) != _str_is_int(given):
        return False
    return _equal_under_sympy(truth, given)


def sympy_normalize(expr: str | None) -> str | None:
    """DeepScaleR's normalisation before a sympy comparison: units, ``$``, ``%``, words for
    big numbers and braces removed, LaTeX turned to text, lower case, integers canonical."""
    if expr is None:
        return None
    if (m := _TEXT.search(expr)) is not None:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "").replace(" or ", " , ").replace(" and ", " , ")
    expr = expr.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
    for unit in _UNITS:
        expr = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(",\\\\! *", "", expr)
    if _is_float(expr) and _is_int(float(expr)):
        expr = str(round(float(expr)))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # pylatexenc raises several types on malformed LaTeX; keep the text then
            pass
    expr = re.sub("- *", "-", expr)
    expr = re.sub("([0-9]) +([0-9])", "\\1+\\2", expr).replace(" ", "").replace("{", "").replace("}", "").lower()
    return str(_str_to_int(expr)) if _str_is_int(expr) else expr


def _latex_to_text(expr: str) -> str:
    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    text = latex2text.LatexNodes2Text().latex_to_text(expr)
    for symbol, name in (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*")):
        text = text.replace(symbol, name)
    return str(text).strip()


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_int(x: float) -> bool:
    try:
        return abs(x - round(x)) <= 1e-7
    except (OverflowError, ValueError):
        return False


def _strip_grouping_commas(expr: str) -> str:
    while (stripped := _GROUPED_DIGITS.sub("\\1\\3\\4", expr)) != expr:
        expr = stripped
    return expr


def _str_is_int(text: str) -> bool:
    try:
        return _is_int(float(_strip_grouping_commas(text)))
    except ValueError:
        return False


def _str_to_int(text: str) -> int:
    return int(float(text.replace(",", "")))


def _split_tuple(expr: str) -> list[str]:
    expr = _strip_grouping_commas(expr)
    if not expr:
        return []
    inner = expr[1:-1]
    if len(expr) > 2 and expr[0] in _TUPLE_CHARS and expr[-1] in _TUPLE_CHARS and not any(c in inner for c in _TUPLE_CHARS):
        return [item.strip() for item in inner.split(",")]
    return [expr]


def _allowed_for_sympy(expr: str) -> bool:
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    if len(letters) > 2 or any(bad in expr for bad in _BAD_SUBSTRINGS):
        return False
    return not any(p.search(expr) for p in _BAD_PATTERNS)


def _equal_under_sympy(truth: str, given: str) -> bool:
    expr = f"({truth})-({given})"
    if not _allowed_for_sympy(expr):
        return False
    names: dict[str, Any] = {k: v for k, v in vars(sympy).items() if not k.startswith("_")}
    transformations = (*sympy_parser.standard_transformations, sympy_parser.implicit_multiplication_application)
    try:
        parsed = sympy_parser.parse_expr(expr.replace("^", "**"), local_dict={}, global_dict={"__builtins__": {}, **names}, transformations=transformations)
        return bool(sympy.simplify(parsed) == 0)
    except Exception:  # sympy raises anything on input it cannot parse: not equal
        return False


# ---------------------------------------------------------------------- slime's scorers
def grade_answer_verl(solution: str, label: Any) -> bool:
    """slime's ``--rm-type math``: the solution's last ``\\boxed{}`` against the label (itself
    unboxed when it holds a ``\\boxed``)."""
    if not label:
        return False
    truth = extract_answer(str(label)) if "\\boxed" in str(label) else str(label)
    given = extract_answer(solution)
    if given is None:
        return False
    return grade_mathd(given, truth) or (truth is not None and grade_sympy(given, truth))


def deepscaler_reward(response: str, label: Any) -> int:
    """slime's ``--rm-type deepscaler``: 1 when the boxed answer after ``</think>`` (or after
    ``###Response``) is right, else 0; a response with neither marker scores 0.

    Raises:
        TypeError: a label that is not a string or a number (slime asserts the same).
    """
    if "</think>" in response:
        solution = response.split("</think>")[-1]
    elif "###Response" in response:
        solution = response.split("###Response")[1]
    else:
        return 0
    given = extract_answer(solution)
    if given is None or label == "":
        return 0
    if not isinstance(label, (str, int, float)):
        raise TypeError(f"--rm-type deepscaler needs a string or number label, got {type(label).__name__}")
    truth = extract_answer(str(label)) if "\\boxed" in str(label) else str(label)
    if truth is None:
        return 0
    return int(grade_mathd(given, truth) or grade_sympy(given, truth))
