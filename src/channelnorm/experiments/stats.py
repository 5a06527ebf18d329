"""Interval math for the report, without scipy: Student-t 95 % confidence intervals of a mean and
of a difference of two means (Welch), from per-seed values.

The t quantile comes from the regularized incomplete beta function (Numerical Recipes' continued
fraction) inverted by bisection; it is checked against tabulated values in the tests.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

LEVEL = 0.95


def is_finite_number(value: object) -> bool:
    """A finite number as read from JSON (bools are not numbers here; an integer too large for a
    float is not finite)."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:
        return False


def per_seed_problem(values: object, mean: object, count: int, name: str, low: float = -math.inf,
                     high: float = math.inf) -> Optional[str]:
    """Why ``values`` (one per seed, read from a results file) and their stored ``mean`` are not
    ``count`` finite numbers in [``low``, ``high``] and their mean, or None."""
    if not (isinstance(values, list) and len(values) == count > 0
            and all(is_finite_number(v) and low <= v <= high for v in values)):
        return f"{name} must be {count} finite numbers in [{low:g}, {high:g}] (one per seed), got {str(values)[:80]}"
    if not (is_finite_number(mean) and math.isclose(mean, sum(values) / count, rel_tol=1e-9, abs_tol=1e-9)):
        return f"mean {mean!r} is not the mean of its {name} {values!r}"
    return None


def interval_problem(interval: object, values: Sequence[float], name: str = "ci95") -> Optional[str]:
    """Why ``interval`` (read from a results file) is not ``mean_ci(values)``'s interval, or None."""
    expected = mean_ci(values)[1]
    if expected is None:
        return None if interval is None else f"{name} must be null for one value, got {interval!r}"
    if not (isinstance(interval, list) and len(interval) == 2 and all(is_finite_number(v) for v in interval)
            and all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(interval, expected))):
        return f"{name} {str(interval)[:80]} is not the 95 % interval of its values ({list(expected)})"
    return None


def paired_by_seed(seeds_a: Sequence[int], values_a: Sequence[float], seeds_b: Sequence[int],
                   values_b: Sequence[float]) -> list[tuple[float, float]]:
    """``(a, b)`` per seed, in ``seeds_a``'s order: two per-seed lists of the same trained models
    (e.g. one cell under two evaluations) paired by seed id, never by position. A ValueError when
    the two are not the same seeds, each once, with one value per seed."""
    if len(seeds_a) != len(values_a) or len(seeds_b) != len(values_b):
        raise ValueError(f"one value per seed is needed, got seeds {list(seeds_a)} with {len(values_a)} values "
                         f"and seeds {list(seeds_b)} with {len(values_b)}")
    if len(set(seeds_a)) != len(seeds_a) or sorted(seeds_a) != sorted(seeds_b):
        raise ValueError(f"values of seeds {list(seeds_a)} and {list(seeds_b)} cannot be paired: the seeds differ")
    other = dict(zip(seeds_b, values_b))
    return [(a, other[seed]) for seed, a in zip(seeds_a, values_a)]


def _betacf(a: float, b: float, x: float) -> float:
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom (df may be fractional)."""
    if df <= 0 or not math.isfinite(df):
        raise ValueError(f"degrees of freedom must be a finite number > 0, got {df!r}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def sample_var(values: Sequence[float]) -> float:
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, Optional[tuple[float, float]]]:
    """Mean and its two-sided t interval (None for fewer than two values: no noise estimate)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci needs at least one value")
    m = mean(values)
    if len(values) < 2:
        return m, None
    half = t_quantile(0.5 + level / 2, len(values) - 1) * math.sqrt(sample_var(values) / len(values))
    return m, (m - half, m + half)


def diff_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, Optional[tuple[float, float]]]:
    """mean(b) - mean(a) and its Welch t interval (unequal variances, Welch-Satterthwaite degrees
    of freedom; seeds are treated as independent samples, which is conservative where the same
    seed gives both cells the same initialization and data order). None for fewer than two values
    on a side. When both samples have zero spread the interval is the point itself."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) < 2 or len(b) < 2:
        return (mean(b) - mean(a) if a and b else math.nan), None
    d = mean(b) - mean(a)
    va, vb = sample_var(a) / len(a), sample_var(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return d, (d, d)
    df = (va + vb) ** 2 / (va * va / (len(a) - 1) + vb * vb / (len(b) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return d, (d - half, d + half)


def excludes_zero(interval: Optional[tuple[float, float]]) -> bool:
    return interval is not None and (interval[0] > 0 or interval[1] < 0)
