"""Dual questions: finding numbers, skipping the ones a placeholder cannot stand for, masking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandemrl.tasks.duality import build_dual_questions, find_numbers, solve_for_variable


def usable(problem: str) -> list[str]:
    return [s.value for s in find_numbers(problem) if s.skip is None]


def reasons(problem: str) -> dict[str, str]:
    return {s.text: s.skip for s in find_numbers(problem) if s.skip}


def test_arith2_expression_becomes_an_equation_for_each_number():
    duals = build_dual_questions("Calculate 26 - 54.")
    assert duals.usable and duals.reason is None
    first, second = duals.questions
    assert (first.hidden, first.expression) == ("26", "x - 54")
    assert (second.hidden, second.expression) == ("54", "26 - x")
    assert first.masked == "Calculate x - 54."
    assert first.prompt("-28") == "x - 54 = -28. What is x?\nEnd your reply with: Answer: <number>"
    assert second.prompt("-28", instruction="") == "26 - x = -28. What is x?"


def test_word_problem_gets_the_paper_phrasing():
    duals = build_dual_questions("Tom buys 4 pens at 3 dollars each. How much does he pay?")
    q = duals.questions[0]
    assert (q.hidden, q.expression) == ("4", None)
    assert q.prompt("12", instruction="") == (
        "Tom buys x pens at 3 dollars each. How much does he pay?\n"
        "Given that the correct answer is 12, determine the value of x."
    )


def test_decimals_and_thousands_are_one_number_each():
    problem = "A pen costs 2.50 dollars, a car 12,500 dollars. Add 3."
    assert usable(problem) == ["2.5", "12500", "3"]
    q = build_dual_questions(problem).questions[1]
    assert q.masked == "A pen costs 2.50 dollars, a car x dollars. Add 3."
    assert q.hidden == "12500"


def test_negatives_signs_versus_minus_operators():
    assert usable("Calculate -7 + 12.") == ["-7", "12"]
    assert build_dual_questions("Calculate -7 + 12.").questions[0].expression == "x + 12"
    assert usable("Calculate 5-3.") == ["5", "3"]  # operator, not a sign
    assert usable("Calculate 54 - -3.") == ["54", "-3"]
    q = build_dual_questions("Calculate \u22124 + 9.").questions[0]  # Unicode minus
    assert (q.hidden, q.expression) == ("-4", "x + 9")


def test_numbers_inside_words_are_skipped_and_do_not_count_as_repeats():
    problem = "The 3rd runner drank 2 liters of H2O and ran 5 km at 2x speed."
    # The digits of "3rd", "H2O" and "2x" are skipped; they show no quantity, so "2 liters"
    # is not a repeat of the 2 in H2O.
    assert usable(problem) == ["2", "5"]
    assert [(s.text, s.skip) for s in find_numbers(problem)] == [
        ("3", "inside a word or term"),
        ("2", None),
        ("2", "inside a word or term"),
        ("5", None),
        ("2", "inside a word or term"),
    ]
    assert (
        build_dual_questions(problem)
        .questions[0]
        .masked.startswith(
            "The 3rd runner drank y liters of H2O"  # "2x" already uses x
        )
    )


def test_repeated_values_are_skipped_everywhere():
    assert usable("Tom has 4 red and 4 blue balls and gives away 2.") == ["2"]
    duals = build_dual_questions("Calculate 3 * 3.")
    assert not duals.usable
    assert duals.reason == "no usable number (repeated value)"
    assert [s.skip for s in duals.skipped] == ["repeated value", "repeated value"]


def test_subscripts_exponents_bounds_and_function_arguments_are_skipped():
    problem = r"If f(2) = 7 and a_3 = 5, compute 2^8 + \sum_{i=1}^{4} i + 9."
    assert usable(problem) == ["7", "5", "9"]
    assert reasons(problem) == {
        "2": "exponent or base of a power",  # the last "2" seen: base of 2^8
        "3": "subscript or bound",
        "8": "exponent or base of a power",
        "1": "subscript or bound",
        "4": "exponent or base of a power",
    }
    assert find_numbers(problem)[0].skip == "function argument"
    assert [q.hidden for q in build_dual_questions(problem, max_questions=2).questions] == [
        "7",
        "5",
    ]
    assert usable("What is 3**2 plus 10?") == ["10"]


def test_range_bounds_are_skipped():
    assert reasons("Pick a number between 1 and 10, then add 4.") == {
        "1": "range bound",
        "10": "range bound",
    }
    assert usable("Count from -3 to 6 and add 8.") == ["8"]


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("What is the capital of France?", "no number in the problem"),
        ("Simplify x^2 * x^3.", "no usable number (exponent or base of a power)"),
        ("Evaluate f(4) - f(4).", "no usable number (function argument)"),
    ],
)
def test_problem_without_a_usable_number_is_skipped_with_a_reason(problem, reason):
    duals = build_dual_questions(problem)
    assert not duals.usable and duals.questions == []
    assert duals.reason == reason


def test_placeholder_avoids_a_variable_the_problem_already_uses():
    q = build_dual_questions("Solve x + 3 = 11 for x.").questions[0]
    assert (q.variable, q.masked, q.hidden) == ("y", "Solve x + y = 11 for x.", "3")
    assert q.prompt("8", instruction="").endswith("determine the value of y.")


# -- the solved form: the dual question with the algebra done ----------------------------


@pytest.mark.parametrize(
    ("expression", "answer", "solved"),
    [
        ("x - 54", "-28", "-28 + 54"),
        ("26 - x", "-28", "26 + 28"),  # 26 - -28, written as a person would
        ("x + 56", "93", "93 - 56"),
        ("-3 + x", "2", "2 + 3"),
        ("x * 8", "56", "56 / 8"),
        ("7 * x", "-56", "-56 / 7"),
        ("x / 4", "3", "3 * 4"),
        ("12 / x", "-3", "12 / (-3)"),
        ("x × 8", "56", "56 / 8"),
    ],
)
def test_solve_for_variable_by_hand(expression, answer, solved):
    assert solve_for_variable(expression, "x", answer) == solved


@pytest.mark.parametrize(
    ("expression", "answer"),
    [
        ("x + 3 * 4", "14"),  # more than one operation: the equation form stays
        ("x * 0", "0"),  # no unique x
        ("12 / x", "0"),
        ("x - y", "3"),  # two unknowns
        ("x - 3", "seven"),  # not a number
    ],
)
def test_solve_for_variable_declines_what_it_cannot_solve(expression, answer):
    assert solve_for_variable(expression, "x", answer) is None


@given(
    a=st.integers(-99, 99),
    b=st.integers(-99, 99).filter(lambda v: v != 0),
    op=st.sampled_from("+-*/"),
    masked_left=st.booleans(),
)
def test_solved_expression_evaluates_to_the_hidden_number(a, b, op, masked_left):
    """For every two-operand problem, the solved dual question at the right answer computes
    the hidden operand (exact arithmetic; `/` only where the primal division is exact)."""
    from fractions import Fraction

    if op == "/" and not masked_left and a == 0:
        return  # 0 / b = 0 for every b: no unique hidden divisor
    value = {"+": a + b, "-": a - b, "*": a * b, "/": Fraction(a, b)}[op]
    if op == "*" and (a == 0 or b == 0):
        return
    if isinstance(value, Fraction) and value.denominator != 1:
        return
    hidden, expression = (a, f"x {op} {b}") if masked_left else (b, f"{a} {op} x")
    solved = solve_for_variable(expression, "x", str(int(value)))
    assert solved is not None
    exact = solved.replace("/", "*Fraction(1)/")  # exact division
    assert eval(exact, {"Fraction": Fraction}) == hidden


def test_solved_form_changes_only_two_operand_expressions():
    q = build_dual_questions("Calculate 26 - 54.").questions[0]
    assert q.prompt("-28", solved_template="Calculate {solved}.", instruction="") == (
        "Calculate -28 + 54."
    )
    assert q.prompt("-28", instruction="") == "x - 54 = -28. What is x?"  # the paper's form
    word = build_dual_questions("Tom buys 4 pens at 3 dollars each.").questions[0]
    assert "determine the value of x" in word.prompt("12", solved_template="Calculate {solved}.")
