"""Interval math for the report, on scipy.stats: Student-t 95 % confidence intervals of a mean,
Welch's test and interval for a difference of two means, Holm's adjustment; and the checks of
per-seed numbers read back from run files.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from scipy import stats

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



def welch(a: Sequence[float], b: Sequence[float],
          level: float = LEVEL) -> tuple[float, Optional[tuple[float, float]], Optional[float]]:
    """``mean(b) - mean(a)``, its Welch t interval (unequal variances, Welch-Satterthwaite degrees
    of freedom) and the two-sided p-value of Welch's test (``scipy.stats.ttest_ind``,
    ``equal_var=False``). Interval and p are None for fewer than two values on a side; two samples
    without spread give the point as interval and p 0 for a non-zero difference, 1 otherwise.
    Seeds are treated as independent samples, which is conservative where the same seed gives both
    cells the same initialization and data order."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        return math.nan, None, None
    delta = sum(b) / len(b) - sum(a) / len(a)
    if len(a) < 2 or len(b) < 2:
        return delta, None, None
    if max(a) == min(a) and max(b) == min(b):
        return delta, (delta, delta), (0.0 if delta != 0 else 1.0)
    result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(level)
    return delta, (float(interval.low), float(interval.high)), float(result.pvalue)


def diff_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> tuple[float, Optional[tuple[float, float]]]:
    """``mean(b) - mean(a)`` and its Welch interval (``welch`` without the p-value)."""
    delta, interval, _ = welch(a, b, level)
    return delta, interval


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, Optional[tuple[float, float]]]:
    """Mean and its two-sided Student-t interval (None for fewer than two values: no noise estimate)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_ci needs at least one value")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    if max(values) == min(values):
        return m, (m, m)
    low, high = stats.t.interval(level, len(values) - 1, loc=m, scale=stats.sem(values))
    return m, (float(low), float(high))


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values; None (no test) stays None and does not count."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[Optional[float]] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def excludes_zero(interval: Optional[tuple[float, float]]) -> bool:
    return interval is not None and (interval[0] > 0 or interval[1] < 0)
