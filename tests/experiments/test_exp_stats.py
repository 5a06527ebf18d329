"""Interval math (scipy.stats underneath) against tabulated Student-t quantiles and intervals,
p-values and Holm adjustments computed by hand."""
import math

import pytest

from channelnorm.experiments.stats import diff_ci, excludes_zero, holm, mean_ci, welch

# two-sided 95 % Student-t quantiles from a printed table
T975 = {2: 4.3026527, 3: 3.1824463}


def test_mean_ci_by_hand():
    # values 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), se = s / 2, t(0.975, 3) = 3.1824463
    m, (lo, hi) = mean_ci([1, 2, 3, 4])
    half = 3.1824463 * math.sqrt(5 / 3) / 2
    assert m == 2.5 and lo == pytest.approx(2.5 - half, abs=1e-6) and hi == pytest.approx(2.5 + half, abs=1e-6)
    assert mean_ci([7.0]) == (7.0, None)


def test_welch_difference_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 7.0]
    va, vb = 1.0 / 3, (7 / 3) / 3           # sample variances 1 and 7/3, divided by n
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    assert df == pytest.approx((10 / 9) ** 2 / ((1 / 9) / 2 + (49 / 81) / 2))   # 3.448
    d, (lo, hi) = diff_ci(a, b)
    # the t quantile at df 3.448 lies between the table's df 3 and df 4 values (3.1824, 2.7764)
    half = (hi - lo) / 2
    assert d == pytest.approx(10 / 3) and (lo + hi) / 2 == pytest.approx(d)
    assert 2.7764451 * math.sqrt(va + vb) < half < T975[3] * math.sqrt(va + vb)
    assert excludes_zero((lo, hi)) and not excludes_zero((-1.0, 2.0)) and not excludes_zero(None)
    assert diff_ci([1.0], [2.0, 3.0])[1] is None
    assert diff_ci([2.0, 2.0], [3.0, 3.0]) == (1.0, (1.0, 1.0))


def test_per_seed_values_read_from_a_file_are_checked():
    from channelnorm.experiments.stats import is_finite_number, per_seed_problem
    assert per_seed_problem([1.0, 2.0, 4.0], 7 / 3, 3, "errors") is None
    assert "must be 3 finite numbers" in per_seed_problem([1.0, 2.0], 1.5, 3, "errors")
    assert "must be 2 finite numbers" in per_seed_problem([1.0, float("nan")], 1.0, 2, "errors")
    assert "must be 0 finite numbers" in per_seed_problem([], 0.0, 0, "errors")          # no seeds: no mean
    assert "is not the mean of its errors" in per_seed_problem([1.0, 2.0], 1.6, 2, "errors")
    assert not is_finite_number(True) and not is_finite_number(10 ** 400) and is_finite_number(3)


def test_welch_p_value_by_hand_at_a_whole_degree_of_freedom():
    # equal variances and sizes make Welch's df whole: a = 0, 2 and b = 3, 5 (variances 2 and 2,
    # n 2): se = sqrt(2/2 + 2/2) = sqrt 2, df = 2, t = 3 / sqrt 2.
    # For df 2 the t distribution has a closed form: P(|T| > t) = 1 - t / sqrt(2 + t^2).
    delta, (lo, hi), p = welch([0.0, 2.0], [3.0, 5.0])
    t = 3 / math.sqrt(2)
    assert delta == 3.0
    assert p == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert (hi - lo) / 2 == pytest.approx(T975[2] * math.sqrt(2), abs=1e-6)
    # no spread on either side: the point itself, p 0 unless the difference is 0
    assert welch([1.0, 1.0], [2.0, 2.0]) == (1.0, (1.0, 1.0), 0.0)
    assert welch([1.0, 1.0], [1.0, 1.0])[2] == 1.0
    assert welch([1.0], [2.0, 3.0])[1:] == (None, None)


def test_holm_by_hand():
    # sorted p 0.01, 0.02, 0.04 over 3 tests: 3 * 0.01, max(prev, 2 * 0.02), max(prev, 1 * 0.04)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, None, 0.01]) == [0.5, None, 0.02]      # a missing test does not count
    assert holm([0.6, 0.7]) == [1.0, 1.0]                    # capped at 1
