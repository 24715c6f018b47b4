"""Statistics of a powered comparison: paired differences over seeds, their t interval and the
smallest difference a design can detect. Pure Python, no torch.

A comparison is *paired* when both arms share everything but the method: the seed (so the
prompt order and initial sampling), the held-out problems and the budget. The per-seed
difference d_s = x_s - y_s then cancels what the seed does to both arms, and the interval is
taken over the d_s (n seeds, n - 1 degrees of freedom):

    mean d ± t_{1-α/2, n-1} · s_d / √n

The detectable effect (minimum detectable effect at power 1 - β) is the true mean difference
that a two-sided paired t test at level α finds with probability 1 - β:

    MDE = (t_{1-α/2, n-1} + t_{1-β, n-1}) · s_d / √n

Student's t quantiles come from the regularized incomplete beta function, so any level and
degrees of freedom work (checked against printed tables in tests/test_power.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) = B(x; a, b) / B(a, b), for x in [0, 1]."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta: x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast on this side
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom:
    the tail P(|T| >= |t|) is I_{df/(df+t²)}(df/2, 1/2)."""
    if df <= 0:
        raise ValueError(f"student_t_cdf: df must be > 0, got {df}")
    x, y = df / (df + t * t), t * t / (df + t * t)
    # Near t = 0, x rounds to 1 and I_x loses every digit: use I_x(a, b) = 1 - I_y(b, a).
    tail = (
        0.5 * incomplete_beta(df / 2.0, 0.5, x)
        if x < 0.5
        else 0.5 - 0.5 * incomplete_beta(0.5, df / 2.0, y)
    )
    return 1.0 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p (bisection on `student_t_cdf`, to 1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"student_t_quantile: p must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        low, high = high, high * 2.0
    while high - low > 1e-10 * max(1.0, high):
        mid = (low + high) / 2.0
        low, high = (mid, high) if student_t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2.0


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """MDE = (t_{1-α/2, n-1} + t_{power, n-1}) · sd / √n: the smallest true mean difference a
    two-sided paired t test over `n` pairs with difference spread `sd` detects with
    probability `power` (module docstring). NaN with fewer than 2 pairs."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    df = n - 1
    return (student_t_quantile(1 - alpha / 2, df) + student_t_quantile(power, df)) * sd / n**0.5


def pairs_needed(
    sd: float, effect: float, alpha: float = 0.05, power: float = 0.8, most: int = 1000
) -> int | None:
    """The fewest pairs (seeds) whose detectable effect is at most `effect`, for a difference
    spread `sd`; None when even `most` pairs are not enough."""
    for n in range(2, most + 1):
        if detectable_effect(sd, n, alpha, power) <= effect:
            return n
    return None


@dataclass(frozen=True)
class PairedDifference:
    """Treatment minus control over matched seeds (module docstring)."""

    n: int
    mean: float  # mean of the per-seed differences
    sd: float  # their sample standard deviation (n - 1 in the denominator)
    half_width: float  # t_{1-α/2, n-1} · sd / √n
    low: float
    high: float
    detectable: float  # MDE at the given level and power
    seeds: tuple[int, ...]

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds), "excludes_zero": self.excludes_zero}


def paired_difference(
    treatment: Mapping[int, float],
    control: Mapping[int, float] | float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> PairedDifference:
    """Per-seed differences treatment[s] - control[s] over the seeds both arms ran, with the
    interval and detectable effect of the module docstring. `control` may be one number
    (the untrained model, the same for every seed). Seeds with a non-finite value in either
    arm are left out; a seed missing from one arm is an error, since it breaks the pairing."""
    if isinstance(control, Mapping):
        missing = set(treatment) ^ set(control)
        if missing:
            raise ValueError(f"paired_difference: seeds {sorted(missing)} are in one arm only")
        base = control
    else:
        base = dict.fromkeys(treatment, float(control))
    seeds = tuple(
        s for s in sorted(treatment) if math.isfinite(treatment[s]) and math.isfinite(base[s])
    )
    diffs = [treatment[s] - base[s] for s in seeds]
    n = len(diffs)
    mean = statistics.fmean(diffs) if diffs else math.nan
    sd = statistics.stdev(diffs) if n >= 2 else math.nan
    half = student_t_quantile(1 - alpha / 2, n - 1) * sd / n**0.5 if n >= 2 else math.nan
    return PairedDifference(
        n=n,
        mean=mean,
        sd=sd,
        half_width=half,
        low=mean - half,
        high=mean + half,
        detectable=detectable_effect(sd, n, alpha, power),
        seeds=seeds,
    )
