"""Interval math against tabulated Student-t quantiles and hand-computed intervals."""
import math

import pytest

from channelnorm.experiments.stats import diff_ci, excludes_zero, mean_ci, t_cdf, t_quantile


@pytest.mark.parametrize("df, q", [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (4, 2.7764451),
                                   (9, 2.2621572), (10, 2.2281389), (30, 2.0422725), (1e6, 1.9599661)])
def test_t_quantile_matches_the_table(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=2e-6)
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=2e-6)


def test_t_cdf_closed_forms():
    # df = 1 is Cauchy: F(t) = 1/2 + atan(t)/pi; df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 4.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    # one-sided 95 % table values at df 5 and 6; a fractional df (Welch) falls between them
    assert t_quantile(0.95, 5) == pytest.approx(2.0150484, abs=2e-6)
    assert t_quantile(0.95, 6) == pytest.approx(1.9431803, abs=2e-6)
    assert 1.9431803 < t_quantile(0.95, 5.5) < 2.0150484


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
    d, (lo, hi) = diff_ci(a, b)
    half = t_quantile(0.975, df) * math.sqrt(va + vb)
    assert d == pytest.approx(10 / 3) and lo == pytest.approx(d - half) and hi == pytest.approx(d + half)
    assert df == pytest.approx((10 / 9) ** 2 / ((1 / 9) / 2 + (49 / 81) / 2))   # 3.448
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
