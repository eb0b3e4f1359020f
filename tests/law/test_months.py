"""`trend months`: a gain factor in months of a trend (hand-computed values)."""

import json
import math

import pytest
from typer.testing import CliRunner

from moorelab.errors import MoorelabError
from moorelab.law.fit import fit_growth
from moorelab.law.months import months_of_factor, months_of_fit, run_months


def test_custom_trend_hand_values():
    # 2.4x at 4.7x/yr (4.3-5.2): 12 ln2.4/ln4.7 = 6.7885; 12 ln2.4/ln5.2 = 6.3722;
    # 12 ln2.4/ln4.3 = 7.2024
    m = months_of_factor(2.4, 4.7, (4.3, 5.2))
    assert m["value"] == pytest.approx(6.7885, abs=1e-4)
    assert m["ci"] == pytest.approx((6.3722, 7.2024), abs=1e-4)
    assert months_of_factor(4.7, 4.7)["value"] == pytest.approx(12.0)
    # a decline trend: 10x cheaper per year, gain 10x -> 12 months
    f = fit_growth([2020, 2021, 2022], [100, 10, 1], direction="decline", n_boot=0)
    assert months_of_fit(10, f)["value"] == pytest.approx(12.0)


def test_interval_unbounded_when_slope_ci_reaches_zero():
    f = fit_growth([0.0, 1.0, 2.0], [1.0, 10.0, 10.0], n_boot=0)  # slope CI crosses zero
    m = months_of_fit(10, f)
    assert m["value"] == pytest.approx(24.0)  # slope 0.5 -> 12 * 1 / 0.5
    assert math.isinf(m["ci_ols"][1])


@pytest.mark.parametrize("gain", [0.0, -2.0, 1.0, float("inf")])
def test_bad_gain(gain):
    with pytest.raises(MoorelabError, match="gain"):
        months_of_factor(gain, 4.7)


def test_months_of_compute_trend_and_cli(trends_dir):
    res = run_months(2.4, trend="compute", data_dir=trends_dir, n_boot=300)
    s = res.fit.slope_log10_per_year
    assert res.figures["months"]["value"] == pytest.approx(12 * math.log10(2.4) / s)
    assert res.figures["months"]["value"] == pytest.approx(6.81, abs=0.01)
    from moorelab.cli import app

    r = CliRunner().invoke(app, ["trend", "months", "2.4", "--trend", "custom",
                                 "--factor-per-year", "4.7", "--ci-lo", "4.3", "--ci-hi", "5.2",
                                 "--json", "--no-plot"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["figures"]["months"]["value"] == pytest.approx(6.7885, abs=1e-4)


def test_months_offline_facts_trend(tmp_path):
    res = run_months(2.0, trend="facts", n_boot=200)
    assert res.figures["months"]["value"] == pytest.approx(
        12 * math.log10(2) / res.fit.slope_log10_per_year)
    res.points.check_accounting()


def test_reference_months_are_signed():
    from moorelab.law.months import months_of_reference

    # 2.9x at 2.90x/year is exactly 12 months; a 2.9x loss is -12 months with a mirrored interval
    gain = months_of_reference(2.90)["algorithmic_efficiency"]
    loss = months_of_reference(1 / 2.90)["algorithmic_efficiency"]
    assert gain["value"] == pytest.approx(12.0)
    assert loss["value"] == pytest.approx(-12.0)
    assert loss["ci"][0] == pytest.approx(-gain["ci"][1]) and loss["ci"][1] == pytest.approx(-gain["ci"][0])
    assert loss["ci"][0] < loss["value"] < loss["ci"][1] < 0


@pytest.mark.parametrize("trend", ["algorithmic_efficiency", "llm_price_at_fixed_capability"])
def test_trend_months_reproduces_each_reference_trend_figure(trend):
    """Every months figure a run reports comes with a command; that command gives the same number."""
    from moorelab.cli import app
    from moorelab.law.months import months_of_reference

    for gain in (2.4, 0.5):
        want = months_of_reference(gain)[trend]
        args = want["command"].split()[1:]  # drop "moorelab"
        r = CliRunner().invoke(app, [*args, "--json", "--no-plot"])
        assert r.exit_code == 0, r.output
        got = json.loads(r.stdout)["figures"]["months"]
        assert got["value"] == pytest.approx(want["value"]) and got["ci"] == pytest.approx(list(want["ci"]))
    assert (want["value"] < 0) == (gain < 1)


def test_unknown_trend_lists_every_name():
    with pytest.raises(MoorelabError, match="algorithmic_efficiency, llm_price_at_fixed_capability, custom"):
        run_months(2.0, trend="nope")
