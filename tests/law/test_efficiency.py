"""moorelab.law.efficiency: a hand-built exact case, the frontier rule, bad input, and the
published quick check on Epoch's capabilities index (SOURCES.md: 2.90x/yr, 90% CI 2.12-3.98,
80 models; frontier 2.57x/yr)."""

import datetime as dt
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moorelab.errors import DataError
from moorelab.law.efficiency import (capability_frontier, efficiency_trend, julian_years,
                                     run_efficiency)


def _frame(names, dates, eci, flop):
    return pd.DataFrame({"Model version": names, "date": dates, "ECI Score": eci,
                         "Training compute (FLOP)": flop, "row": np.arange(2, len(names) + 2),
                         "file": "mem.csv"})


def test_golden_orthogonal_design():
    # ECI = 5 ln(FLOP) + 3 * years + c exactly; ln FLOP and dates form a full grid, so they
    # are uncorrelated and stage 1 recovers k = 5 exactly; then db/dt = 3 ECI/yr and the
    # compute-equivalent gain is exp(3/5) = 1.822x per year.
    base = dt.date(2023, 1, 1)
    names, dates, eci, flop = [], [], [], []
    for i, lnc in enumerate([50.0, 52.0, 54.0]):
        for j in range(4):
            d = base + dt.timedelta(days=round(365.25 * j))
            t = julian_years([d.isoformat()])[0]
            names.append(f"m{i}{j}")
            dates.append(d.isoformat())
            eci.append(5 * lnc + 3 * t - 6000)
            flop.append(math.exp(lnc))
    res = efficiency_trend(_frame(names, dates, eci, flop))
    assert res.stage1.slope == pytest.approx(5.0, rel=1e-9)
    assert res.all_models.stage2.slope == pytest.approx(3.0, rel=1e-6)
    assert res.all_models.gain_per_year == pytest.approx(math.exp(0.6), rel=1e-6)
    assert res.all_models.n == 12


def test_frontier_is_a_strict_running_maximum_in_date_order():
    pts = pd.DataFrame({"date": ["2023-03-01", "2023-01-01", "2023-01-01", "2023-05-01",
                                 "2023-06-01", "2023-07-01"],
                        "eci": [110.0, 100.0, 105.0, 110.0, 120.0, 90.0]})
    assert capability_frontier(pts).tolist() == [True, True, True, False, True, False]


def test_rows_are_accounted_and_bad_values_are_errors():
    f = _frame(["a", "b", "c", "d", "e"], ["2023-01-01", "2023-06-01", "2024-01-01",
                                           "2024-06-01", "2025-01-01"],
               [100.0, np.nan, 110.0, 115.0, 120.0], [1e23, 1e24, np.nan, 1e25, 1e26])
    res = efficiency_trend(f)
    assert res.all_models.n == 3 and res.n_input == 5
    assert {d.label: d.reason for d in res.dropped} == {
        "b": "ECI Score missing", "c": "Training compute (FLOP) missing"}
    f.loc[4, "Training compute (FLOP)"] = -1.0
    with pytest.raises(DataError, match=r"mem.csv row 6, field 'Training compute \(FLOP\)'"):
        efficiency_trend(f)
    with pytest.raises(DataError, match="at least 3"):
        efficiency_trend(f.iloc[:2])
    with pytest.raises(DataError, match="missing column 'ECI Score'"):
        efficiency_trend(f.drop(columns=["ECI Score"]))


def test_unparseable_date_in_file(tmp_path):
    d = tmp_path / "epoch-benchmark-stitching"
    d.mkdir()
    cols = ["Model version", "ECI Score", "Release date", "Organization",
            "Training compute (FLOP)", "Model name"]
    pd.DataFrame([["m", 120.0, "2024-13-01", "x", 1e24, "m"]], columns=cols).to_csv(
        d / "epoch_capabilities_index_2025-11-07.csv", index=False)
    with pytest.raises(DataError, match=r"row 2, field 'Release date'"):
        run_efficiency(tmp_path)


# --------------------------------------------------------------------------- published data
def _trends():
    """../shared/data/trends beside the checkout; skip (fail under CI) when absent."""
    t = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "trends"
    if not t.is_dir():
        msg = f"shared trend data not found at {t}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return t


def test_reproduces_quick_check_all_models():
    res = run_efficiency(_trends())  # epoch_capabilities_index_2025-11-07.csv
    a = res.all_models
    assert a.n == 80
    assert round(a.gain_per_year, 2) == 2.90                       # published 2.90x/yr
    assert [round(v, 2) for v in a.ci_fixed_k] == [2.12, 3.98]     # published 90% CI 2.12-3.98
    assert a.n + len(res.dropped) == res.n_input == 426
    f = res.frontier  # published: n=13, 2.57x (1.23-5.36); our stated rule gives n=15
    assert round(f.gain_per_year, 2) == 2.57
    assert 1.23 <= f.ci_fixed_k[0] and f.ci_fixed_k[1] <= 5.36


def test_benchmark_hub_snapshot_about_3x():
    # SOURCES.md: 2026-01 hub snapshot, pooled k, 140 models -> ~3.0x/yr (90% CI 2.4-3.8)
    a = run_efficiency(_trends(), snapshot="2026-01").all_models
    assert a.n == 140 and round(a.gain_per_year, 1) == 3.0
    assert [round(v, 1) for v in a.ci_fixed_k] == [2.4, 3.8]


def test_cli_json_and_table(tmp_path):
    from typer.testing import CliRunner

    from moorelab.cli import app

    r = CliRunner().invoke(app, ["trend", "efficiency", "--data", str(_trends()), "--json",
                                 "--plot", str(tmp_path / "e.png")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    g = d["all_models"]["compute_equivalent_gain_per_year"]
    assert g["unit"] == "x less compute per year" and "Epoch AI" in d["credit"]
    assert (tmp_path / "e.png").stat().st_size > 10_000
    r = CliRunner().invoke(app, ["trend", "efficiency", "--data", str(_trends()), "--no-plot"])
    assert r.exit_code == 0 and "Epoch AI" in r.stdout and "capability frontier" in r.stdout
