"""`trend compute` reproduces Epoch AI's 4.7x/yr (90% CI 4.3-5.2), n = 428, from its data."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from moorelab.law.compute import compute_points, run_compute
from moorelab.law.data import load_notable_models




def test_reproduces_epoch_compute_trend(trends_dir):
    res = run_compute(trends_dir, n_boot=2000)
    f = res.fit
    # published: 4.7x/yr (90% CI 4.3-5.2), 428 observations (Epoch AI, June 2024)
    assert f.n == 428
    assert round(f.factor_per_year, 1) == 4.7
    assert 4.3 <= f.factor_per_year <= 5.2
    assert f.factor_ci_ols[0] == pytest.approx(4.3, abs=0.1)
    assert f.factor_ci_ols[1] == pytest.approx(5.2, abs=0.1)
    assert f.factor_per_year == pytest.approx(4.679, abs=0.005)   # our value, SOURCES.md: 4.68
    assert f.doubling_time_months == pytest.approx(5.39, abs=0.01)  # ≈ 5.4 months
    # bootstrap interval close to the OLS one on 428 points
    assert f.factor_ci_boot[0] == pytest.approx(f.factor_ci_ols[0], abs=0.15)
    assert f.factor_ci_boot[1] == pytest.approx(f.factor_ci_ols[1], abs=0.15)
    assert all(p.agrees for p in res.published)
    # every input row accounted for
    res.points.check_accounting()
    assert res.points.n_input == 1892
    assert res.points.dropped_summary() == {"training compute missing": 904,
                                            "not a notable model": 504,
                                            "before window start 2010-01-01": 56}


def test_matches_plain_pandas_filter(trends_dir):
    df = pd.read_csv(trends_dir / "epoch-training-cost-trends" / "All_ML_Systems_-_full_view.csv")
    sel = df[df["Notability criteria"].notna()
             & (pd.to_datetime(df["Publication date"], format="%Y-%m-%d") >= "2010-01-01")
             & (df["Training compute (FLOP)"] > 0)]
    pts, _ = compute_points(load_notable_models(trends_dir))
    assert sorted(pts.label) == sorted(sel["Model"].astype(str))


def test_variants_match_published_secondary_figures(trends_dir):
    res = run_compute(trends_dir, n_boot=0)
    v = {x.name: x.fit for x in res.variants}
    lm = v["notable language models since 2017-06"]
    assert lm.factor_per_year == pytest.approx(9.85, abs=0.01)  # Epoch: "as fast as 9x/yr"
    assert lm.factor_ci_ols[0] <= 9.0 <= lm.factor_ci_ols[1]
    cut = v["notable models 2010-01 to 2024-06"]
    assert cut.factor_per_year == pytest.approx(4.26, abs=0.01)
    assert 3.7 <= cut.factor_per_year <= 4.6  # Sevilla & Roldan 4.1x (3.7-4.6)


def test_frontier_option(trends_dir):
    res = run_compute(trends_dir, frontier="record", n_boot=0)
    assert res.published == []  # published figure is for all notable models, not the frontier
    assert res.fit.n == 22 and res.background.n == 428
    assert any("not a frontier record" in d.reason for d in res.points.dropped)


def test_cli_json_and_plot(trends_dir, tmp_path):
    from moorelab.cli import app

    png = tmp_path / "c.png"
    r = CliRunner().invoke(app, ["trend", "compute", "--data", str(trends_dir), "--json",
                                 "--plot", str(png), "--n-boot", "500"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)  # exactly one JSON object
    assert out["fit"]["n"] == 428
    assert out["fit"]["factor_per_year"]["unit"] == "x/year"
    assert out["data"]["n_used"] + out["data"]["n_dropped"] == out["data"]["n_input"] == 1892
    assert len(out["data"]["dropped"]) == out["data"]["n_dropped"]
    assert "Epoch AI" in out["credit"]
    assert png.stat().st_size > 10_000 and out["plot"] == str(png)
    r = CliRunner().invoke(app, ["trend", "compute", "--data", str(trends_dir), "--no-plot",
                                 "--n-boot", "200"])
    assert r.exit_code == 0 and "4.68" in r.stdout and "Epoch AI" in r.stdout
