"""The powered benchmark's statistics (tandemrl.bench.power) against hand-computed values and
printed t tables."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tandemrl.algos import pass_at_k
from tandemrl.bench.power import (
    detectable_effect,
    incomplete_beta,
    paired_difference,
    pairs_needed,
    student_t_cdf,
    student_t_quantile,
)


@pytest.mark.parametrize(
    ("p", "df", "table"),
    [
        (0.975, 1, 12.706),
        (0.975, 2, 4.303),
        (0.975, 4, 2.776),
        (0.975, 9, 2.262),
        (0.975, 30, 2.042),
        (0.80, 1, 1.376),
        (0.80, 4, 0.941),
        (0.80, 9, 0.883),
        (0.95, 10, 1.812),
        (0.90, 2, 1.886),
        (0.995, 5, 4.032),
    ],
)
def test_t_quantiles_match_printed_tables(p: float, df: int, table: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(table, abs=5e-4)
    assert student_t_quantile(1 - p, df) == pytest.approx(-table, abs=5e-4)


def test_t_tends_to_the_normal() -> None:
    assert student_t_quantile(0.975, 1e7) == pytest.approx(1.95996, abs=1e-4)


@given(st.floats(-50, 50))
def test_t_cdf_closed_forms(t: float) -> None:
    # df = 1 is Cauchy, df = 2 has a closed form too.
    assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-9)
    assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-9)


@given(st.floats(0.001, 0.999), st.integers(1, 200))
def test_quantile_inverts_cdf(p: float, df: int) -> None:
    assert student_t_cdf(student_t_quantile(p, df), df) == pytest.approx(p, abs=1e-8)


@given(st.floats(0.0, 1.0), st.floats(0.2, 20.0))
def test_incomplete_beta_special_cases(x: float, a: float) -> None:
    assert incomplete_beta(1.0, 1.0, x) == pytest.approx(x, abs=1e-12)
    assert incomplete_beta(a, 1.0, x) == pytest.approx(x**a, abs=1e-9)
    assert incomplete_beta(1.0, a, x) == pytest.approx(1 - (1 - x) ** a, abs=1e-9)


def test_paired_difference_by_hand() -> None:
    # differences 0.10, 0.04, 0.12, 0.08, 0.06: mean 0.08, squared deviations sum 0.004,
    # sd = sqrt(0.004 / 4) = 0.0316228, se = 0.0141421;
    # half = 2.776445 * se = 0.0392645; MDE = (2.776445 + 0.940965) * se = 0.0525728.
    treatment = {0: 0.40, 1: 0.35, 2: 0.45, 3: 0.38, 4: 0.42}
    control = {0: 0.30, 1: 0.31, 2: 0.33, 3: 0.30, 4: 0.36}
    d = paired_difference(treatment, control)
    assert d.n == 5 and d.seeds == (0, 1, 2, 3, 4)
    assert d.mean == pytest.approx(0.08)
    assert d.sd == pytest.approx(0.0316228, abs=1e-6)
    assert d.half_width == pytest.approx(0.0392645, abs=1e-6)
    assert (d.low, d.high) == pytest.approx((0.0407355, 0.1192645), abs=1e-6)
    assert d.detectable == pytest.approx(0.0525728, abs=1e-6)
    assert d.excludes_zero
    # Unpaired, the arms' own spreads would swamp the effect; pairing is what separates them.
    reversed_control = {s: control[s] + 0.10 for s in control}
    assert not paired_difference(treatment, reversed_control).excludes_zero


def test_paired_difference_against_a_constant_and_bad_pairing() -> None:
    d = paired_difference({0: 0.5, 1: 0.3, 2: 0.4}, 0.3)  # diffs 0.2, 0.0, 0.1
    assert d.mean == pytest.approx(0.1)
    assert d.sd == pytest.approx(0.1)
    assert d.half_width == pytest.approx(4.302653 * 0.1 / math.sqrt(3), abs=1e-6)
    assert not d.excludes_zero  # [-0.148, 0.348]
    with pytest.raises(ValueError, match=r"seeds \[2\] are in one arm only"):
        paired_difference({0: 0.5, 1: 0.3, 2: 0.4}, {0: 0.1, 1: 0.2})
    one = paired_difference({0: 0.5, 1: math.nan}, {0: 0.4, 1: 0.4})
    assert one.n == 1 and math.isnan(one.half_width) and not one.excludes_zero


def test_detectable_effect_and_pairs_needed() -> None:
    # (t_.975,9 + t_.8,9) * 0.05 / sqrt(10) = (2.262157 + 0.883404) * 0.0158114 = 0.0497357
    assert detectable_effect(0.05, 10) == pytest.approx(0.0497357, abs=1e-6)
    # n = 9: (2.306004 + 0.888890) * 0.05 / 3 = 0.0532482 > 0.05 (quantiles from mpmath), so 10 seeds are needed.
    assert detectable_effect(0.05, 9) > 0.05
    assert pairs_needed(0.05, 0.05) == 10
    assert pairs_needed(0.05, 0.0001, most=50) is None
    assert math.isnan(detectable_effect(0.05, 1))


def test_pass_at_k_by_hand() -> None:
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
    assert pass_at_k(16, 2, 4) == pytest.approx(1 - 1001 / 1820)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # only 2 wrong ones: any 3 include a right one
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)


@given(st.integers(1, 30), st.data())
def test_pass_at_k_grows_with_k_and_matches_mean_at_1(n: int, data: st.DataObject) -> None:
    c = data.draw(st.integers(0, n))
    values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
    assert values[0] == pytest.approx(c / n)
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))
