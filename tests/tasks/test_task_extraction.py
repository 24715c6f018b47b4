"""Answer extraction on hand-written completions (expected values written by hand, not computed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandemrl.tasks.extraction import (
    extract_number,
    extract_text,
    has_answer_line,
    normalize_number,
)
from tandemrl.tasks.verify import math_verify_equal, numbers_equal


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("5 + 3 = 8. Answer: 8", "8"),
        ("Answer: 8", "8"),
        ("ANSWER: 9", "9"),
        ("**Answer:** 42", "42"),
        ("**Answer**: 42", "42"),
        ("Answer:\n\n  -0.50", "-0.5"),
        ("Answer: 5.0", "5"),
        ("Answer: -0", "0"),
        ("Answer: +5", "5"),
        ("Answer: 007", "7"),
        ("answer: .5", "0.5"),
        ("Answer: 3.14159.", "3.14159"),
        ("Answer: 42.", "42"),
        ("Answer: 1,234", "1234"),
        ("The answer is 1,234,567.", "1234567"),
        ("Answer: 1{,}000", "1000"),
        ("$1,234.56 total", "1234.56"),
        ("Answer: \u22127", "-7"),  # Unicode minus sign
        ("Answer: -7", "-7"),
        ("x = -3", "-3"),
        ("5-3", "3"),  # a minus after a digit is an operator, not a sign
        ("10 - 3 = 7", "7"),
        # first number after the marker, not the last one in the text
        ("Answer: 12 apples, I think 13", "12"),
        ("2, 3 and Answer: 4 then 5", "4"),
        # the last marker wins
        ("Final Answer: 10\nAnswer: 11", "11"),
        # an equation on the answer line: the result after the last '='
        ("Answer: 12 + 5 = 17.", "17"),
        ("Answer: 50 - 8 = 42", "42"),
        ("x=5, y=6. Answer: x = 5", "5"),
        # the model echoed the template, then gave the number
        ("Answer: <number>\n42", "42"),
        # marker with no number anywhere after it: fall back to the text before
        ("It is 17. Answer: unsure", "17"),
        # boxed beats the last number when there is no marker
        ("so \\boxed{-7}. Check: 3 - 10 = 4", "-7"),
        ("\\boxed{{1{,}200}} dollars, not 5", "1200"),
        ("I think it is 12, no wait, 13", "13"),
        ("Calculate 5 * 33 gives 165", "165"),
    ],
)
def test_extract_number(completion: str, expected: str) -> None:
    assert extract_number(completion) == expected


@pytest.mark.parametrize("completion", ["", "no idea", "Answer: none", "x y z."])
def test_extract_number_none(completion: str) -> None:
    assert extract_number(completion) is None


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_extract_number_roundtrips_integers(n: int) -> None:
    assert extract_number(f"Let me think: 3 + 4 = 7.\nAnswer: {n}") == str(n)
    assert extract_number(f"The total is {n:,}.") == str(n)


@pytest.mark.parametrize(
    ("token", "expected"),
    [("+1,234.50", "1234.5"), ("-0.0", "0"), ("2.500", "2.5"), ("-.25", "-0.25"), ("100", "100")],
)
def test_normalize_number(token: str, expected: str) -> None:
    assert normalize_number(token) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Let me think.\nAnswer: **blue whale**", "blue whale"),
        ("Answer: `nus`\nThat is all.", "nus"),
        ("answer:\n\n  Yes  ", "Yes"),
        ("Answer: first\nAnswer: second", "second"),
        ("Answer: _ Q _ _", "_ Q _ _"),  # underscores are content, not markdown
        ("The result is \\boxed{x^{2}+1}", "x^{2}+1"),
        ("no marker here", None),
        ("Answer:   ", None),
    ],
)
def test_extract_text(completion: str, expected: str | None) -> None:
    assert extract_text(completion) == expected


def test_extract_text_multiline_keeps_the_grid() -> None:
    completion = "Here it is.\nAnswer:\n```\n1 2\n3 4\n```\n"
    assert extract_text(completion) == "1 2"
    assert extract_text(completion, multiline=True) == "1 2\n3 4"


@pytest.mark.parametrize(
    ("completion", "numeric", "expected"),
    [
        ("Answer: 42", True, True),
        ("**Answer:** 42", True, True),
        ("Answer: <number>", True, False),
        ("Answer: <number>", False, True),
        ("The answer is 42", True, False),
        ("Answer:", False, False),
    ],
)
def test_has_answer_line(completion: str, numeric: bool, expected: bool) -> None:
    assert has_answer_line(completion, numeric=numeric) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("1,234", "1234.0", True),
        ("-5", "-5", True),
        ("-5", "5", False),
        ("nan", "nan", False),
        ("Infinity", "Infinity", False),
        ("1/2", "0.5", False),  # not a plain number: that is math-verify's job
    ],
)
def test_numbers_equal(a: str, b: str, expected: bool) -> None:
    assert numbers_equal(a, b) is expected


def test_math_verify_equal() -> None:
    assert math_verify_equal("1/2", "0.5")
    assert math_verify_equal("x**2 + 2*x + 1", "(x+1)^2")
    assert math_verify_equal("3*sin(x) + C", "C + 3 sin(x)")
    assert not math_verify_equal("1/2", "0.25")
    assert not math_verify_equal("42", "not maths at all")
    # prose would parse as a product of letters, making anagrams equal
    assert not math_verify_equal("True", "Ture")
