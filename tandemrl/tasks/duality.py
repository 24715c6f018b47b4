"""Dual questions for maths problems (the DuPO paper's duality reward, docs/duality.md): find the numbers, mask one, ask for it back.

DuPO (He et al., "DuPO: Enabling Reliable LLM Self-Verification via Dual Preference
Optimization", arXiv 2508.14460) rewards a response without a label. The input is split as
x = x_k ⊕ x_u (known part, hidden part); the primal task maps x to an answer y; the dual task
reconstructs the hidden part from (y, x_k); the reward is

    r(y) = exp(−λ·d(x_u, x̂_u)),   maths: r(y) = 1[x̂_u = x_u]   (d = 0/1 distance)

For a maths problem, x_u is one number of the problem. ``build_dual_questions`` finds the
numbers, skips the ones a placeholder cannot stand for (rules below), and for each usable one
writes the problem with a variable in its place; ``DualQuestion.prompt(answer)`` adds the
primal answer. A bare expression (``Calculate 26 - 54.``) becomes an equation,
``x - 54 = -28. What is x?``; any other problem gets the paper's phrasing,
``... Given that the correct answer is -28, determine the value of x.`` The hidden number is
kept for scoring; the problem's own label is never read.

Which numbers are skipped (each skipped number carries its reason, in ``DualSet.skipped``):

- inside a word or term: a letter or ``_`` touches it (``H2O``, ``x2``, ``3rd``, ``2x``);
- a subscript or a bound: after ``_`` or inside ``_{...}`` (``a_1``, ``\\sum_{i=1}``,
  ``\\log_{10}``);
- an exponent or the base of a power: after ``^``/``**`` or inside ``^{...}``, or directly
  followed by ``^``/``**`` (``2^10``: both numbers);
- a function argument: inside ``(...)`` opened right after a letter (``f(3)``, ``\\sin(30)``);
- a range bound: ``between A and B``, ``from A to B``;
- a repeated value: every copy of a value that occurs more than once (digits inside words
  not counted), since masking one copy leaves the number in view (``Calculate 3 * 3.`` has no
  usable number).

Numbers follow ``tandemrl.tasks.extraction`` (decimals, ``1,234``, the Unicode minus): a
``-`` is part of the number when it is a sign (``Calculate -3 + 5``, ``= -3``), and an operator
when a digit or a closing bracket comes before it (``5-3``, ``54 - 3``). Pure Python, no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tandemrl.tasks.extraction import normalize_number

__all__ = [
    "EQUATION_TEMPLATE",
    "NUMBER_INSTRUCTION",
    "PAPER_TEMPLATE",
    "SOLVED_TEMPLATE",
    "DualQuestion",
    "DualSet",
    "NumberSpan",
    "build_dual_questions",
    "find_numbers",
    "solve_for_variable",
]

PAPER_TEMPLATE = (
    "{problem}\nGiven that the correct answer is {answer}, determine the value of {variable}."
)
EQUATION_TEMPLATE = "{expression} = {answer}. What is {variable}?"
SOLVED_TEMPLATE = "Calculate {solved}."
NUMBER_INSTRUCTION = "End your reply with: Answer: <number>"
_IN_WORD = "inside a word or term"
_SPARE_VARIABLES = ("y", "z", "n", "k")  # used when the problem already has the variable

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|-?\.\d+")
# "Calculate 26 - 54." and friends: a command word, then only numbers, operators, brackets.
_EXPRESSION = re.compile(
    r"^\s*(?:calculate|compute|evaluate|what is|find|solve)\s*:?\s+"
    r"(?P<expr>[-+*/×÷^().\d\s,]+?)\s*[.?=]?\s*$",
    re.IGNORECASE,
)
_OPERAND = r"-?(?:\d+(?:\.\d+)?|\.\d+)"
_BINARY = re.compile(
    rf"^\s*(?P<left>{_OPERAND}|\w+)\s*(?P<op>[-+*/×÷])\s*(?P<right>{_OPERAND}|\w+)\s*$"
)
_RANGE = re.compile(
    r"\b(?:between|from)\s+(-?\d[\d,.]*)\s+(?:and|to)\s+(-?\d[\d,.]*)", re.IGNORECASE
)


@dataclass(frozen=True)
class NumberSpan:
    """One number in a problem: ``text[start:end]``, its canonical value, why it is skipped."""

    start: int
    end: int
    text: str
    value: str
    skip: str | None = None


@dataclass(frozen=True)
class DualQuestion:
    """The problem with one number replaced by ``variable``; ``hidden`` is that number."""

    masked: str
    hidden: str
    span: NumberSpan
    variable: str = "x"
    expression: str | None = None  # the masked expression when the problem is a bare one

    def prompt(
        self,
        answer: str,
        *,
        template: str = PAPER_TEMPLATE,
        equation_template: str = EQUATION_TEMPLATE,
        instruction: str = NUMBER_INSTRUCTION,
        solved_template: str | None = None,
    ) -> str:
        """The dual question for primal answer ``answer``, ending with ``instruction``.
        With ``solved_template``, a two-operand expression is asked solved for the variable
        (``x - 54 = -28`` -> ``Calculate -28 + 54.``); anything else keeps its template."""
        solved = None
        if solved_template is not None and self.expression is not None:
            solved = solve_for_variable(self.expression, self.variable, answer)
        if solved is not None:
            text = solved_template.format(solved=solved)
        elif self.expression is not None:
            text = equation_template.format(
                expression=self.expression, answer=answer, variable=self.variable
            )
        else:
            text = template.format(problem=self.masked, answer=answer, variable=self.variable)
        return f"{text}\n{instruction}" if instruction else text


@dataclass(frozen=True)
class DualSet:
    """The dual questions of one problem; ``reason`` says why there are none."""

    problem: str
    questions: list[DualQuestion] = field(default_factory=list)
    skipped: list[NumberSpan] = field(default_factory=list)
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return bool(self.questions)


def _sign_is_operator(text: str, start: int) -> bool:
    """Whether the ``-`` at ``start`` subtracts (a digit or closing bracket comes before it)."""
    before = text[:start].rstrip()
    return bool(before) and (before[-1].isdigit() or before[-1] in ")]}")


def _enclosing(text: str, start: int, opening: str, closing: str) -> int | None:
    """Index of the unmatched ``opening`` bracket before ``start``, if any."""
    depth = 0
    for i in range(start - 1, -1, -1):
        if text[i] == closing:
            depth += 1
        elif text[i] == opening:
            if depth == 0:
                return i
            depth -= 1
    return None


def _skip_reason(text: str, start: int, end: int) -> str | None:
    before, after = text[:start], text[end:]
    prev = before[-1:] if before else ""
    brace = _enclosing(text, start, "{", "}")
    if prev == "_" or (brace is not None and text[brace - 1 : brace] == "_"):
        return "subscript or bound"
    if prev.isalpha() or after[:1].isalpha() or after[:1] == "_":
        return _IN_WORD
    exponent_before = prev == "^" or before.endswith("**")
    exponent_after = after.lstrip().startswith(("^", "**"))
    if exponent_before or exponent_after or (brace is not None and text[brace - 1 : brace] == "^"):
        return "exponent or base of a power"
    paren = _enclosing(text, start, "(", ")")
    if paren is not None and paren > 0 and text[paren - 1].isalpha():
        return "function argument"
    return None


def find_numbers(problem: str) -> list[NumberSpan]:
    """Every number in ``problem`` in order, each with its skip reason (None = usable)."""
    text = problem.replace("\u2212", "-")
    in_range = {m.start(g) for m in _RANGE.finditer(text) for g in (1, 2)}
    spans: list[NumberSpan] = []
    for match in _NUMBER.finditer(text):
        start, end = match.span()
        if text[start] == "-" and _sign_is_operator(text, start):
            start += 1
        if start > 0 and (text[start - 1].isdigit() or text[start - 1] == "."):
            continue  # the tail of something that is not one number (e.g. "1.2.3")
        token = text[start:end]
        reason = "range bound" if start in in_range else _skip_reason(text, start, end)
        spans.append(NumberSpan(start, end, token, normalize_number(token), reason))
    counts: dict[str, int] = {}
    for span in spans:  # a digit inside a word ("H2O") shows no quantity: not counted
        if span.skip != _IN_WORD:
            counts[span.value] = counts.get(span.value, 0) + 1
    return [
        NumberSpan(s.start, s.end, s.text, s.value, "repeated value")
        if s.skip is None and counts.get(s.value, 0) > 1
        else s
        for s in spans
    ]


def build_dual_questions(
    problem: str, *, variable: str = "x", max_questions: int | None = None
) -> DualSet:
    """The dual questions of ``problem``: one per usable number, at most ``max_questions``
    (the first ones in the text); a ``DualSet`` with a ``reason`` when none is usable.
    ``variable`` is the placeholder; when the problem already uses it as a word, the first
    free one of y, z, n, k stands in."""
    spans = find_numbers(problem)
    text = problem.replace("\u2212", "-")
    usable = [s for s in spans if s.skip is None]
    skipped = [s for s in spans if s.skip is not None]
    if not usable:
        if not spans:
            reason = "no number in the problem"
        else:
            reasons = sorted({s.skip for s in skipped if s.skip})
            reason = "no usable number (" + "; ".join(reasons) + ")"
        return DualSet(problem, [], skipped, reason)
    words = set(re.findall(r"[A-Za-z]+", text))
    free = [v for v in (variable, *_SPARE_VARIABLES) if v not in words]
    if not free:
        return DualSet(problem, [], spans, f"the variable {variable!r} already occurs")
    variable = free[0]
    expr_match = _EXPRESSION.match(text)
    questions = []
    for span in usable[:max_questions]:
        masked = text[: span.start] + variable + text[span.end :]
        expression = None
        if expr_match is not None:
            lo, hi = expr_match.span("expr")
            expression = " ".join((text[lo : span.start] + variable + text[span.end : hi]).split())
        questions.append(DualQuestion(masked, span.value, span, variable, expression))
    return DualSet(problem, questions, skipped)


def _negate(number: str) -> str:
    return number[1:] if number.startswith("-") else f"-{number}"


def _binary(left: str, op: str, right: str) -> str:
    """``left op right`` written as a person would: ``a - -b`` as ``a + b``, ``a * -b`` as
    ``a * (-b)``."""
    if right.startswith("-") and op in "+-":
        op, right = ("-" if op == "+" else "+"), right[1:]
    elif right.startswith("-"):
        right = f"({right})"
    return f"{left} {op} {right}"


def solve_for_variable(expression: str, variable: str, answer: str) -> str | None:
    """The forward expression whose value is ``variable`` when ``expression = answer``, for
    one binary operation with the variable as one operand; None for anything else.

        x + b = A -> A - b      a + x = A -> A - a
        x - b = A -> A + b      a - x = A -> a - A
        x * b = A -> A / b      a * x = A -> A / a
        x / b = A -> A * b      a / x = A -> a / A

    The same dual question as the equation, with the algebra done: a model that can compute
    the primal problem can compute this one, while ``26 - x = -28. What is x?`` defeats
    SmolLM2-135M (backward accuracy 0.006, docs/duality.md)."""
    match = _BINARY.match(expression.replace("×", "*").replace("÷", "/"))
    answer = answer.strip()
    if match is None or not re.fullmatch(_OPERAND, answer):
        return None
    left, op, right = match.group("left", "op", "right")
    if (left == variable) == (right == variable):
        return None  # the variable is not exactly one of the two operands
    known = right if left == variable else left
    if not re.fullmatch(_OPERAND, known):
        return None
    if op == "+":
        return _binary(answer, "-", known)
    if op == "*":
        return None if float(known) == 0 else _binary(answer, "/", known)
    if left == variable:  # x - b = A, x / b = A
        return _binary(answer, "+" if op == "-" else "*", known)
    if op == "/" and float(answer) == 0:
        return None
    return _binary(known, op, answer)  # a - x = A -> a - A; a / x = A -> a / A
