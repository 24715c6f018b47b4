"""Answer checks that back up a dataset's own scorer.

``numbers_equal`` is exact decimal comparison: it catches answers a string-comparing scorer
rejects only because of formatting, e.g. reasoning-gym's ``gsm_symbolic`` reads ``-5`` as ``5``.
``math_verify_equal`` asks math-verify whether two expressions are equivalent; it is opt-in
(reasoning-gym option ``math_verify``) because it treats comma-separated lists as sets, which
is wrong for order-sensitive answers, and costs sympy time per completion.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal

__all__ = ["math_verify_equal", "numbers_equal"]

_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")


def _as_decimal(value: object) -> Decimal | None:
    text = str(value).replace(",", "").strip()
    # Decimal() also accepts "nan" and "Infinity", which must never count as a match.
    return Decimal(text) if _PLAIN_NUMBER.fullmatch(text) else None


def numbers_equal(a: object, b: object) -> bool:
    """True when both are plain numbers (after dropping thousands commas) of equal value."""
    x, y = _as_decimal(a), _as_decimal(b)
    return x is not None and y is not None and x == y


# Words that may appear in a maths answer; any other run of letters means prose, which
# math-verify would read as a product of symbols (so that anagrams compare equal).
_MATH_WORDS = {"sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp", "sqrt", "pi", "oo"}
_WORD = re.compile(r"(?<!\\)[A-Za-z]{2,}")


def _as_latex(text: str) -> str | None:
    """``text`` in a form math-verify parses as one expression, or None if it looks like prose."""
    text = text.strip()
    if "$" in text or "\\boxed" in text:
        return text
    if any(word.lower() not in _MATH_WORDS for word in _WORD.findall(text)):
        return None
    # Bare text is read as "last number in the text"; inside $...$ it is one expression.
    return "$" + text.replace("**", "^") + "$"


def math_verify_equal(gold: str, predicted: str) -> bool:
    """math-verify equivalence of two answers; False whenever math-verify cannot decide.

    Bare answers such as ``x**2 + 2*x + 1`` or ``1/2`` are read as one LaTeX expression;
    answers with words other than function names (``sin``, ``log``, ...) never match.
    """
    from math_verify import parse, verify

    gold_tex, pred_tex = _as_latex(gold), _as_latex(predicted)
    if gold_tex is None or pred_tex is None:
        return False
    # math-verify times out with signal.alarm, which only works on the main thread.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(gold_tex, parsing_timeout=timeout)
        pred_parsed = parse(pred_tex, parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # math-verify raises assorted sympy errors on odd input
        return False
