"""Pulling the final answer out of a model completion.

Small models rarely format answers the way a prompt asks, so extraction is lenient but follows a
fixed, documented order. Numeric answers (``extract_number``):

1. After the last ``Answer:`` marker (case-insensitive; ``**Answer:**`` and ``Final answer:``
   count): the first number on the first non-empty line after it. If that line holds an
   equation, the part after its last ``=`` is used, so ``Answer: 50 - 8 = 42`` gives ``42``.
   If that line has no number, the first number anywhere after the marker.
2. Else the content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), first number in it.
3. Else the last number anywhere in the completion.
4. Else ``None``.

Numbers are normalised so that string-comparing scorers (most of reasoning-gym) see the
canonical form: thousands separators dropped (``1,234`` and LaTeX ``1{,}234`` -> ``1234``), a
trailing sentence period ignored (``42.`` -> ``42``), trailing decimal zeros dropped
(``5.0`` -> ``5``, ``2.50`` -> ``2.5``), ``+`` signs, leading zeros and ``-0`` cleaned, the
Unicode minus sign accepted. A ``-`` counts as a sign only when it is not preceded by a word
character and is directly followed by a digit, so ``5-3`` yields ``5`` then ``3``, while
``x = -3`` yields ``-3``. Fractions and scientific notation are not parsed (``1/2`` gives ``1``
then ``2``).

Examples::

    >>> extract_number("5 + 3 = 8. Answer: 8")
    '8'
    >>> extract_number("**Answer:** $1,234.")
    '1234'
    >>> extract_number("Answer: 50 - 8 = 42")
    '42'
    >>> extract_number("so the result is \\\\boxed{-7}. Check: 3 - 10 = -7")
    '-7'
    >>> extract_number("I think it is 12, no wait, 13")
    '13'
    >>> extract_number("no idea") is None
    True

Text answers (``extract_text``): the rest of the line after the last ``Answer:`` marker (the
next non-empty line if the marker ends its line; with ``multiline=True`` everything after the
marker), stripped of whitespace and of markdown ``*`` and backticks at either end; else the
last ``\\boxed{...}`` content; else ``None``::

    >>> extract_text("Let me think.\\nAnswer: **blue whale**")
    'blue whale'
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["extract_number", "extract_text", "has_answer_line", "normalize_number", "NUMBER_RE"]

# A sign belongs to the number only when attached to it and not following a word character
# (so "5-3" is two numbers). The thousands form must not be followed by another digit, else
# "1,2345" would read as "1,234" and "5".
NUMBER_RE = re.compile(
    r"(?<![\w.])(?:[-+](?=\.?\d))?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?"
    r"|(?<![\w.])(?:[-+])?\.\d+"
)
_MARKER_RE = re.compile(r"answer[*_\s]*:", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Markdown emphasis and code marks around an answer; not "_", which some answers consist of.
_WRAPPERS = "*` \t"


def _clean(text: str) -> str:
    # LaTeX writes thousands separators as "{,}" and models copy Unicode minus signs.
    return text.replace("{,}", ",").replace("\u2212", "-")


def normalize_number(token: str) -> str:
    """Canonical string form of a number token: ``"+1,234.50"`` -> ``"1234.5"``."""
    raw = token.replace(",", "").lstrip("+")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        return raw
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _numbers(text: str) -> list[str]:
    return [m.group(0) for m in NUMBER_RE.finditer(text)]


def _after_last_marker(text: str) -> str | None:
    matches = list(_MARKER_RE.finditer(text))
    return text[matches[-1].end() :] if matches else None


def _first_nonempty_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip(_WRAPPERS):
            return line
    return ""


def _last_boxed(text: str) -> str | None:
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return text[start:]  # unclosed brace: take what is there rather than nothing


def extract_number(completion: str) -> str | None:
    """The final numeric answer in ``completion`` as a normalised string, or ``None``."""
    text = _clean(completion)
    tail = _after_last_marker(text)
    if tail is not None:
        line = _first_nonempty_line(tail)
        if "=" in line:
            after_eq = line.rsplit("=", 1)[1]
            if _numbers(after_eq):
                line = after_eq
        found = _numbers(line) or _numbers(tail)
        if found:
            return normalize_number(found[0])
    boxed = _last_boxed(text)
    if boxed is not None and (found := _numbers(boxed)):
        return normalize_number(found[0])
    found = _numbers(text)
    return normalize_number(found[-1]) if found else None


def extract_text(completion: str, *, multiline: bool = False) -> str | None:
    """The final free-text answer in ``completion``, or ``None``.

    ``multiline=True`` (for answers such as grids) keeps everything after the marker instead
    of one line.
    """
    tail = _after_last_marker(completion)
    if tail is not None:
        if multiline:
            answer = tail.strip(_WRAPPERS + "\n").strip()
        else:
            answer = _first_nonempty_line(tail).strip(_WRAPPERS).strip()
        if answer:
            return answer
    boxed = _last_boxed(completion)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return None


def has_answer_line(completion: str, *, numeric: bool = False) -> bool:
    """True when the last ``Answer:`` marker is followed by an answer on its line.

    With ``numeric=True`` that answer must contain a number, so a model echoing the template
    ``Answer: <number>`` does not count.
    """
    tail = _after_last_marker(_clean(completion))
    if tail is None:
        return False
    line = _first_nonempty_line(tail)
    return bool(_numbers(line)) if numeric else bool(line.strip(_WRAPPERS))


def answer_key(completion: str) -> str:
    """What counts as "the answer" when counting distinct answers: the extracted number, else
    the `Answer:` text, else the whole completion with whitespace and case normalised."""
    return (
        extract_number(completion)
        or extract_text(completion)
        or " ".join(completion.split()).lower()
    )
