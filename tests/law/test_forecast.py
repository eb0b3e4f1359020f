"""`trend forecast`: threshold crossing with a prediction interval."""

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from moorelab.errors import DataError, MoorelabError
from moorelab.law.fit import fit_growth
from moorelab.law.forecast import (crossing_bootstrap, crossing_prediction_interval,
                                   crossing_year, run_forecast)

X = np.arange(2000.0, 2010.0)
NOISE = np.array([0.1, -0.1] * 5)
Y = 10 ** (X - 2000 + NOISE)  # one order of magnitude per year


def test_crossing_matches_fit_and_prediction_band():
    f = fit_growth(X, Y, n_boot=0, ci=0.90)
    x_star = crossing_year(f, 1e15)
    assert x_star == pytest.approx((15 - f.intercept_log10) / f.slope_log10_per_year)
    lo, hi = crossing_prediction_interval(f, 1e15)
    assert lo < x_star < hi
    # at the ends, the band edges equal log10(threshold)
    _, _, up = f.prediction_interval_log10(lo)
    _, down, _ = f.prediction_interval_log10(hi)
    assert float(up) == pytest.approx(15.0, abs=1e-5)
    assert float(down) == pytest.approx(15.0, abs=1e-5)
    # statsmodels gives the same band
    sm = pytest.importorskip("statsmodels.api")
    res = sm.OLS(np.log10(Y), sm.add_constant(X)).fit()
    fr = res.get_prediction(np.array([[1.0, lo], [1.0, hi]])).summary_frame(alpha=0.10)
    assert fr["obs_ci_upper"].iloc[0] == pytest.approx(15.0, abs=1e-5)
    assert fr["obs_ci_lower"].iloc[1] == pytest.approx(15.0, abs=1e-5)
    b = crossing_bootstrap(X, Y, 1e15, level=0.9, n_boot=2000, seed=0)
    assert b["ci"][0] < x_star < b["ci"][1]
    assert b["n_wrong_sign"] == 0


def test_declining_metric():
    f = fit_growth(X, 1 / Y, n_boot=0)
    x_star = crossing_year(f, 1e-15)
    lo, hi = crossing_prediction_interval(f, 1e-15)
    assert lo < x_star < hi and x_star == pytest.approx(2015.0, abs=0.2)


def test_forecast_csv_trend_and_cli(tmp_path):
    p = tmp_path / "m.csv"
    rows = ["name,date,value"] + [f"m{i},{int(x)}-07-02,{float(y)!r}" for i, (x, y) in enumerate(zip(X, Y))]
    rows.append("bad,2011-07-02,0")  # reported drop, not silent
    p.write_text("\n".join(rows) + "\n")
    res = run_forecast(1e15, trend="csv", csv=p, label_col="name", n_boot=500)
    assert res.fit.n == 10
    assert [d.label for d in res.points.dropped] == ["bad"]
    x_star = res.figures["crossing date (fitted line)"]["year"]
    assert x_star == pytest.approx(2015.5, abs=0.3)
    from moorelab.cli import app

    r = CliRunner().invoke(app, ["trend", "forecast", "1e15", "--trend", "csv", "--csv", str(p),
                                 "--label-col", "name", "--json", "--plot",
                                 str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["figures"]["crossing date (fitted line)"]["value"].startswith("2015")
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_forecast_bad_input(tmp_path):
    with pytest.raises(MoorelabError, match="threshold"):
        run_forecast(0.0, trend="csv", csv=tmp_path / "x.csv")
    p = tmp_path / "bad.csv"
    p.write_text("date,value\n2020-01-01,1\n2021-31-01,2\n")
    with pytest.raises(DataError, match=r"bad\.csv row 3, field 'date'"):
        run_forecast(10.0, trend="csv", csv=p)


def test_forecast_compute_frontier(trends_dir):
    res = run_forecast(1e27, trend="compute", data_dir=trends_dir, n_boot=500)
    assert res.fit.n == 22  # running records since 2010
    yrs = res.figures["90% prediction interval"]["years"]
    x_star = res.figures["crossing date (fitted line)"]["year"]
    assert yrs[0] < x_star < yrs[1] and 2023 < x_star < 2030
