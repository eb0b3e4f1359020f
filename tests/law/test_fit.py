"""fit_growth: hand-computed golden values, statsmodels parity, bootstrap accounting, errors."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from moorelab.errors import DataError
from moorelab.law.fit import LOG10_2, bootstrap_slopes, fit_growth


def test_exact_doubling_every_year():
    f = fit_growth([2000, 2001, 2002, 2003], [1, 2, 4, 8], n_boot=200)
    assert f.slope_log10_per_year == pytest.approx(LOG10_2)
    assert f.factor_per_year == pytest.approx(2.0)
    assert f.doubling_time_years == pytest.approx(1.0)
    assert f.doubling_time_months == pytest.approx(12.0)
    assert f.time_kind == "doubling"
    assert f.r_squared == pytest.approx(1.0)
    assert f.slope_se == pytest.approx(0.0, abs=1e-12)
    assert f.factor_ci_ols == pytest.approx((2.0, 2.0))
    assert f.x_range == (2000.0, 2003.0)


def test_three_point_golden_values():
    # log10 y = [0, 1, 1] on x = [0, 1, 2]: slope 1/2, intercept 1/6, SSE 1/6,
    # s^2 = 1/6 (dof 1), SE = sqrt(s^2 / Sxx) = sqrt(1/12); t_{0.95, 1} = 6.313752
    f = fit_growth([0.0, 1.0, 2.0], [1.0, 10.0, 10.0], ci=0.90, n_boot=0)
    assert f.slope_log10_per_year == pytest.approx(0.5)
    assert f.intercept_log10 == pytest.approx(1 / 6)
    assert f.slope_se == pytest.approx(math.sqrt(1 / 12))
    assert f.resid_sd == pytest.approx(math.sqrt(1 / 6))
    assert f.factor_per_year == pytest.approx(10 ** 0.5)
    t = 6.313751514675041
    lo, hi = 0.5 - t * math.sqrt(1 / 12), 0.5 + t * math.sqrt(1 / 12)
    assert f.slope_ci_ols == pytest.approx((lo, hi))
    assert f.factor_ci_ols == pytest.approx((10 ** lo, 10 ** hi))
    # slope CI crosses zero -> doubling time unbounded above
    assert f.doubling_time_ci_ols[0] == pytest.approx(LOG10_2 / hi)
    assert math.isinf(f.doubling_time_ci_ols[1])
    assert f.r_squared == pytest.approx(1 - (1 / 6) / (2 / 3))
    assert f.factor_ci_boot is None and f.n_boot == 0
    d = f.to_dict()
    json.dumps(d)  # JSON-ready (inf -> None)
    assert d["doubling_time"]["ci_ols"][1] is None
    assert d["factor_per_year"]["unit"] == "x/year"


def test_matches_statsmodels_ols():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(3)
    x = 2010 + 14 * rng.random(300)
    y = 10 ** (0.67 * (x - 2010) + 15 + rng.normal(0, 1.7, x.size))
    f = fit_growth(x, y, ci=0.90, n_boot=0)
    res = sm.OLS(np.log10(y), sm.add_constant(x)).fit()
    assert f.slope_log10_per_year == pytest.approx(res.params[1], rel=1e-9)
    assert f.slope_se == pytest.approx(res.bse[1], rel=1e-9)
    assert f.r_squared == pytest.approx(res.rsquared, rel=1e-9)
    ci = res.conf_int(alpha=0.10)[1]
    assert f.slope_ci_ols == pytest.approx(tuple(ci), rel=1e-9)
    pred = res.get_prediction(np.array([[1.0, 2030.0]])).summary_frame(alpha=0.10)
    yhat, lo, hi = f.prediction_interval_log10(2030.0)
    assert float(yhat) == pytest.approx(pred["mean"].iloc[0], rel=1e-9)
    assert float(lo) == pytest.approx(pred["obs_ci_lower"].iloc[0], rel=1e-9)
    assert float(hi) == pytest.approx(pred["obs_ci_upper"].iloc[0], rel=1e-9)


def test_bootstrap_close_to_ols_on_well_behaved_data():
    rng = np.random.default_rng(0)
    x = 2000 + 20 * rng.random(500)
    y = 10 ** (0.3 * x - 600 + rng.normal(0, 0.3, x.size))
    f = fit_growth(x, y, n_boot=4000, seed=1)
    assert f.n_boot_degenerate == 0
    for a, b in zip(f.slope_ci_boot, f.slope_ci_ols):
        assert a == pytest.approx(b, abs=0.15 * (f.slope_ci_ols[1] - f.slope_ci_ols[0]))
    # same seed -> same interval; different seed -> different
    g = fit_growth(x, y, n_boot=4000, seed=1)
    assert g.slope_ci_boot == f.slope_ci_boot


def test_degenerate_resamples_skipped_and_counted():
    # 3 points at x=0, one at x=1: P(resample has all x equal) = (3/4)^4 + (1/4)^4 = 0.3203
    x = np.array([0.0, 0.0, 0.0, 1.0])
    y = np.array([1.0, 2.0, 3.0, 10.0])
    n_boot = 20000
    slopes, deg = bootstrap_slopes(x, np.log10(y), n_boot, seed=5)
    assert slopes.size + deg == n_boot
    p = 0.75 ** 4 + 0.25 ** 4
    assert abs(deg - p * n_boot) < 5 * math.sqrt(n_boot * p * (1 - p))
    assert np.all(np.isfinite(slopes))
    f = fit_growth(x, y, n_boot=n_boot, seed=5)
    assert f.n_boot_degenerate == deg
    assert f.to_dict()["bootstrap"]["n_degenerate_skipped"] == deg


def test_decline_direction_and_halving():
    f = fit_growth([2020, 2021, 2022], [100.0, 10.0, 1.0], direction="decline", n_boot=100)
    assert f.factor_per_year == pytest.approx(10.0)
    assert f.time_kind == "halving"
    assert f.doubling_time_years == pytest.approx(LOG10_2)
    g = fit_growth([2020, 2021, 2022], [100.0, 10.0, 1.0], n_boot=0)
    assert g.factor_per_year == pytest.approx(0.1)
    assert g.time_kind == "halving"
    assert g.to_dict()["halving_time"]["value"] == pytest.approx(LOG10_2)


@pytest.mark.parametrize(
    "x, y, match",
    [
        ([1, 2], [1, 2], "at least 3"),
        ([1, 2, 3], [1, 0, 2], "point 1.*> 0"),
        ([1, 2, 3], [1, -5, 2], "point 1"),
        ([1, 2, 3], [1, float("nan"), 2], "point 1"),
        ([1, 1, 1], [1, 2, 3], "one date"),
        ([1, 2, float("nan")], [1, 2, 3], "non-finite date"),
        ([1, 2, 3], [1, 2], "x has 3"),
    ],
)
def test_bad_input_raises_naming_the_point(x, y, match):
    with pytest.raises(DataError, match=match):
        fit_growth(x, y)


def test_error_names_label():
    with pytest.raises(DataError, match="'GPT-3'"):
        fit_growth([1, 2, 3], [1, 0, 2], labels=["a", "GPT-3", "c"])
