"""`moorelab trend fit FILE`: any dated series, known answers, every row accounted for."""

import datetime as dt
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from moorelab.errors import DataError
from moorelab.law.dates import decimal_year
from moorelab.law.trendfit import load_dated_values, parse_frontier, run_fit

# dates whose decimal years are exact: Jan 1 (x.0) and Jul 2 of the leap year 2024 (x.5)
DATES = ["2020-01-01", "2021-01-01", "2022-01-01", "2023-01-01", "2024-01-01", "2024-07-02",
         "2025-01-01"]


def _write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n"
                                                      for r in rows))
    return path


def _doubling_rows(half_year=0.5, lower=False):
    out = []
    for d in DATES:
        t = decimal_year(dt.date.fromisoformat(d)) - 2020.0
        v = 2.0 ** (t / half_year)
        out.append((d, repr(1000.0 / v if lower else v)))
    return out


def test_exact_doubling_every_six_months(tmp_path):
    f = _write_csv(tmp_path / "s.csv", ["date", "value"], _doubling_rows())
    res = run_fit(f, n_boot=200)
    fit = res.fit
    assert fit.time_kind == "doubling" and fit.direction == "growth"
    assert fit.doubling_time_months == pytest.approx(6.0, rel=1e-9)
    assert fit.factor_per_year == pytest.approx(4.0, rel=1e-9)
    # no noise: both intervals collapse onto the point
    assert fit.factor_ci_ols == pytest.approx((4.0, 4.0), rel=1e-6)
    assert fit.factor_ci_boot == pytest.approx((4.0, 4.0), rel=1e-6)
    assert res.points.n == 7 and res.points.dropped == []


def test_lower_is_better_reports_halving_time_and_decline_factor(tmp_path):
    f = _write_csv(tmp_path / "p.csv", ["date", "price"], _doubling_rows(lower=True))
    res = run_fit(f, value_col="price", lower_is_better=True, n_boot=0)
    fit = res.fit
    assert fit.time_kind == "halving" and fit.direction == "decline"
    assert fit.doubling_time_months == pytest.approx(6.0, rel=1e-9)
    assert fit.factor_per_year == pytest.approx(4.0, rel=1e-9)  # 4x cheaper per year
    d = res.to_dict()["fit"]
    assert d["halving_time_months"]["value"] == pytest.approx(6.0)
    assert d["factor_per_year"]["unit"] == "x/year decrease"


def test_running_best_changes_the_answer_as_computed_by_hand(tmp_path):
    # x = 2020..2023, values 1, 10, 5, 1000: records are 1, 10, 1000 (5 does not beat 10)
    rows = [("a", "2020-01-01", 1), ("b", "2021-01-01", 10), ("c", "2022-01-01", 5),
            ("d", "2023-01-01", 1000)]
    f = _write_csv(tmp_path / "r.csv", ["name", "date", "value"], rows)
    all_rows = run_fit(f, label_col="name", n_boot=0)
    # by hand: dx = -1.5, -.5, .5, 1.5 (Sxx = 5); sum dx*log10 y = -.5 + .5 log10 5 + 4.5
    assert all_rows.fit.slope_log10_per_year == pytest.approx((4 + 0.5 * math.log10(5)) / 5)
    assert all_rows.fit.factor_per_year == pytest.approx(10 ** ((4 + 0.5 * math.log10(5)) / 5))
    best = run_fit(f, label_col="name", frontier="running-best", n_boot=0)
    # records at x = 0, 1, 3 with log10 y = 0, 1, 3: exactly one decade per year
    assert best.fit.factor_per_year == pytest.approx(10.0)
    assert best.fit.doubling_time_months == pytest.approx(12 * math.log10(2))
    assert list(best.points.label) == ["a", "b", "d"]
    (drop,) = best.points.dropped
    assert drop.row == 4 and drop.label == "c" and "does not exceed b" in drop.reason
    assert best.dropped_by_kind["not on the frontier"] == 1
    assert best.candidates.n == 4


def test_running_best_lower_is_better_is_the_running_minimum(tmp_path):
    rows = [("2020-01-01", 100), ("2021-01-01", 10), ("2022-01-01", 50), ("2023-01-01", 0.1)]
    f = _write_csv(tmp_path / "m.csv", ["date", "usd"], rows)
    res = run_fit(f, value_col="usd", lower_is_better=True, frontier="running-best", n_boot=0)
    # minima 100, 10, 0.1 at x = 0, 1, 3: log10 = 2, 1, -1 -> slope -1: 10x cheaper per year
    assert list(res.points.value) == [100, 10, 0.1]
    assert res.fit.factor_per_year == pytest.approx(10.0)
    assert res.fit.time_kind == "halving"
    assert "does not undercut" in res.points.dropped[0].reason


def test_top_k_frontier(tmp_path):
    rows = [("2020-01-01", 8), ("2020-01-01", 4), ("2020-01-01", 2), ("2021-01-01", 1),
            ("2022-01-01", 16)]
    f = _write_csv(tmp_path / "k.csv", ["date", "value"], rows)
    res = run_fit(f, frontier="top-2", n_boot=0)
    # 2 (two better same-date points) and 1 (8, 4, 2 all better) are not in the top 2
    assert sorted(res.points.value) == [4, 8, 16]
    assert res.dropped_by_kind["not on the frontier"] == 2
    assert parse_frontier("top-3") == ("top", 3)
    for bad in ("top-0", "best", "top"):
        with pytest.raises(DataError, match="none, running-best or top-K"):
            parse_frontier(bad)


def test_jsonl_input_and_line_numbers(tmp_path):
    f = tmp_path / "s.jsonl"
    lines = [json.dumps({"when": d, "v": float(v), "name": f"m{i}"})
             for i, (d, v) in enumerate(_doubling_rows())]
    lines.insert(3, "")  # a blank line is skipped but counted in line numbers
    lines.append(json.dumps({"when": "2025-06-01", "v": -1, "name": "neg"}))
    f.write_text("\n".join(lines) + "\n")
    res = run_fit(f, date_col="when", value_col="v", label_col="name", n_boot=0)
    assert res.fit.doubling_time_months == pytest.approx(6.0, rel=1e-9)
    (drop,) = res.points.dropped
    assert drop.row == 9 and drop.label == "neg" and "v <= 0" in drop.reason
    assert list(res.points.row) == [1, 2, 3, 5, 6, 7, 8]


def test_rows_dropped_with_reasons_and_counted_by_kind(tmp_path):
    rows = [("a", "2020-01-01", 1), ("b", "2021-01-01", 2), ("c", "2022-01-01", 4),
            ("d", "2023-01-01", 8),
            ("zero", "2021-06-01", 0), ("neg", "2021-06-01", -3), ("text", "2021-06-01", "abc"),
            ("empty", "2021-06-01", ""), ("tbd", "TBD", 5), ("nodate", "", 5),
            ("early", "2019-01-01", 7), ("late", "2024-01-01", 9), ("a", "2020-01-01", 1)]
    f = _write_csv(tmp_path / "d.csv", ["name", "date", "value"], rows)
    res = run_fit(f, label_col="name", since="2020-01-01", until="2024-01-01", n_boot=0)
    assert res.fit.factor_per_year == pytest.approx(2.0)
    assert res.points.n == 4 and res.points.n_input == 13
    assert res.dropped_by_kind == {
        "date missing": 1, "date unparseable": 1, "value missing or not a number": 2,
        "value <= 0 (or infinite)": 2, "duplicate row": 1, "outside --since/--until": 2,
        "not on the frontier": 0}
    why = {d.label: (d.row, d.reason) for d in res.points.dropped}
    assert why["tbd"] == (10, "date unparseable as %Y-%m-%d ('TBD')")
    assert why["nodate"] == (11, "date missing")
    assert why["zero"][1].startswith("value <= 0")
    assert why["text"][1] == "value not a number ('abc')"
    assert why["early"] == (12, "before window start 2020-01-01")
    assert why["late"] == (13, "on or after window end 2024-01-01")
    assert why["a"] == (14, "duplicate of row 2")
    d = res.to_dict()["data"]
    assert d["dropped_by_kind"]["value <= 0 (or infinite)"] == 2 and d["n_dropped"] == 9


def test_mixed_date_formats_is_one_error_naming_column_and_rows(tmp_path):
    rows = [("2023-01-05", 1), ("2023-02-05", 2), ("05/03/2023", 3), ("2023-04-05", 4),
            ("5 Jun 2023", 5)]
    f = _write_csv(tmp_path / "mix.csv", ["released", "value"], rows)
    with pytest.raises(DataError) as e:
        run_fit(f, date_col="released")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(f) in msg and "column 'released'" in msg and "mixed date formats" in msg
    assert "row 2 '2023-01-05' is %Y-%m-%d" in msg
    assert "row 4 '05/03/2023' (reads as %d/%m/%Y or %m/%d/%Y; 1 row(s) like it)" in msg
    assert "row 6 '5 Jun 2023' (reads as %d %b %Y; 1 row(s) like it)" in msg
    # the whole column in another format than asked: one example per shape, read as the
    # layout every value of that shape fits (01/02 could be either; 13/02 is day first)
    g = _write_csv(tmp_path / "dmy.csv", ["date", "value"],
                   [("01/02/2023", 1), ("13/02/2023", 2), ("14/03/2023", 4)])
    with pytest.raises(DataError, match=r"no date matches %Y-%m-%d; row 2 '01/02/2023' "
                                        r"\(reads as %d/%m/%Y; 3 row\(s\) like it\); pass"):
        run_fit(g)
    res = run_fit(g, date_format="%d/%m/%Y", n_boot=0)  # the format asked for: fits
    assert res.points.n == 3


def test_missing_column_empty_file_and_too_few_rows(tmp_path):
    f = _write_csv(tmp_path / "c.csv", ["day", "price"], [("2020-01-01", 1)])
    with pytest.raises(DataError, match=r"missing column\(s\) 'date' \(columns present: "
                                        r"'day', 'price'\)"):
        run_fit(f, value_col="price")
    g = tmp_path / "c.jsonl"
    g.write_text('{"day": "2020-01-01", "price": 1}\n')
    with pytest.raises(DataError, match=r"missing column\(s\) 'value' \(columns present: "
                                        r"'day', 'price'\)"):
        load_dated_values(g, date_col="day")
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty file"):
        run_fit(empty)
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty file"):
        run_fit(tmp_path / "e.jsonl")
    few = _write_csv(tmp_path / "few.csv", ["date", "value"],
                     [("2020-01-01", 1), ("2021-01-01", 2), ("2022-01-01", 0)])
    with pytest.raises(DataError, match=r"2 usable row\(s\) of 3 \(1 value <= 0 \(or "
                                        r"infinite\)\); a trend fit needs at least 3"):
        run_fit(few)
    header_only = tmp_path / "h.csv"
    header_only.write_text("date,value\n")
    with pytest.raises(DataError, match=r"0 usable row\(s\) of 0 \(none dropped\)"):
        run_fit(header_only)
    ok = _write_csv(tmp_path / "ok.csv", ["date", "value"], _doubling_rows())
    with pytest.raises(DataError, match=r"option --since: cannot parse date '2020/01/01'"):
        run_fit(ok, since="2020/01/01")
    with pytest.raises(DataError, match="end 2020-01-01 is not after start 2021-01-01"):
        run_fit(ok, since="2021-01-01", until="2020-01-01")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        run_fit(tmp_path / "x.xlsx")


def _run(*args):
    return subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_cli_json_and_plot(tmp_path):
    from moorelab.cli import app

    f = _write_csv(tmp_path / "s.csv", ["date", "tokens"], _doubling_rows())
    png = tmp_path / "fit.png"
    r = CliRunner().invoke(app, ["trend", "fit", str(f), "--value-col", "tokens", "--json",
                                 "--n-boot", "100", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["analysis"] == "fit" and d["metric"] == "tokens"
    assert d["fit"]["doubling_time_months"]["value"] == pytest.approx(6.0)
    assert d["fit"]["factor_per_year"]["value"] == pytest.approx(4.0)
    assert d["data"]["n_used"] == 7 and d["plot"] == str(png)
    assert png.stat().st_size > 10_000
    r = CliRunner().invoke(app, ["trend", "fit", str(f), "--value-col", "tokens", "--no-plot",
                                 "--lower-is-better", "--n-boot", "0"])
    assert r.exit_code == 0
    assert "halving" not in r.stdout and "doubling time (months)" in r.stdout
    assert "rises although lower is better" in r.stdout


def test_cli_mixed_formats_is_one_line_exit_2(tmp_path):
    f = _write_csv(tmp_path / "mix.csv", ["date", "value"],
                   [("2023-01-05", 1), ("05/01/2023", 2), ("2023-03-05", 3)])
    r = _run("trend", "fit", str(f), "--no-plot")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1
    assert "mixed date formats" in lines[0] and "column 'date'" in lines[0]
    assert "row 2 '2023-01-05'" in lines[0] and "row 3 '05/01/2023'" in lines[0]


def test_jsonl_bad_line_names_the_line(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"date": "2020-01-01", "value": 1}\n{"date": 2020-01-02}\n')
    with pytest.raises(DataError, match=r"b\.jsonl line 2: not valid JSON"):
        run_fit(f)
    f.write_text('{"date": "2020-01-01", "value": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"b\.jsonl line 2: not a JSON object \(a list\)"):
        run_fit(f)


def test_top_k_lower_is_better_keeps_the_k_lowest(tmp_path):
    rows = [("2020-01-01", 8), ("2020-01-01", 4), ("2020-01-01", 2), ("2021-01-01", 16),
            ("2022-01-01", 0.5)]
    f = _write_csv(tmp_path / "k.csv", ["date", "usd"], rows)
    res = run_fit(f, value_col="usd", lower_is_better=True, frontier="top-2", n_boot=0)
    # 8 (4 and 2 cheaper) and 16 (three cheaper) drop; 4 and 2 at x = 0, 0.5 at x = 2 remain.
    # By hand: the two at x = 0 average 2^1.5 in log; the line goes from 2^1.5 to 2^-1 in two
    # years (the OLS line through two x values joins the log means): 2.5 halvings / 2 years.
    assert sorted(res.points.value) == [0.5, 2, 4]
    assert res.fit.factor_per_year == pytest.approx(2 ** 1.25)
    assert res.fit.doubling_time_months == pytest.approx(12 / 1.25)
    x = np.array([2020.0, 2020.0, 2022.0])
    assert res.fit.slope_log10_per_year == pytest.approx(np.polyfit(x, np.log10([4, 2, .5]), 1)[0])


def test_registered_for_programmatic_use_and_in_help(tmp_path):
    from moorelab.cli import app
    from moorelab.law.cli import ANALYSES

    f = _write_csv(tmp_path / "s.csv", ["date", "value"], _doubling_rows())
    assert ANALYSES["fit"](path=f, n_boot=0).fit.factor_per_year == pytest.approx(4.0)
    assert "fit" in CliRunner().invoke(app, ["trend", "--help"]).stdout
