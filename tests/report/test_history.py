"""`moorelab history` and `moorelab trend local` on hand-made history records."""

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from moorelab.law.reference import REFERENCE_TRENDS
from moorelab.measure import history as h
from moorelab.report.local_trend import LocalTrendError, local_trend


def _row(name, usd, bpb=1.0, disturbed=False, tps=None):
    m = {"usd_per_million_tokens_decode": {"value": usd, "unit": "$/1M tokens"},
         "bits_per_byte": {"value": bpb, "unit": "bits/byte"}}
    if tps is not None:
        m["decode_tokens_per_s"] = {"value": tps, "unit": "tokens/s"}
    return {"name": name, "technique": name, "kernel": "k", "metrics": m, "speed_disturbed": disturbed}


def _record(db, date, rows):
    results = {"model": {"name": "tiny"}, "task": {"text": "t", "bytes": 10, "tokens": 3}, "rows": rows}
    return h.record_rows(results, command="run", path=db, results_path="/r.json",
                         recorded_at=f"{date}T12:00:00+00:00")


@pytest.fixture
def db(tmp_path):
    """Tokens per $ (1e6 / $ per 1M tokens) of the best run x4 per year = doubling every 6.0
    months, on 1 January of 2021-2025 (whole decimal years); around it, runs that do not beat the
    best so far, disturbed runs that would beat it, and runs of worse quality that would too."""
    path = tmp_path / "history.sqlite"
    for i, year in enumerate(range(2021, 2026)):
        best = 8.0 / 4 ** i  # $ per 1M tokens: tokens per $ = 125000 * 4**i
        _record(path, f"{year}-01-01", [
            _row("best", best),
            _row("slower", best * 3),                       # same date, worse: not a record
            _row("disturbed", best / 50, disturbed=True),   # would be a record: excluded, counted
            _row("big-loss", best / 30, bpb=1.6),           # would be a record at 1.6 bits/byte
        ])
    _record(path, "2023-07-01", [_row("mid-year, worse", 8.0 / 4 ** 2 * 1.01)])  # between records, worse
    return path


def test_known_doubling_time_from_the_running_best(db):
    res = local_trend(h.list_records(db), max_bits_per_byte=1.2, n_boot=200, source=str(db))
    f = res.fit
    assert f.n == 5
    assert f.doubling_time_months == pytest.approx(6.0, abs=1e-9)
    assert f.factor_per_year == pytest.approx(4.0, rel=1e-12)
    assert list(res.points.value) == pytest.approx([125000.0 * 4 ** i for i in range(5)])
    assert res.selection["excluded"] == {"speed disturbed": 5, "above --max-bits-per-byte": 5,
                                         "no bits per byte": 0, "metric missing or <= 0": 0,
                                         "not a best-so-far record": 6}
    assert res.points.n_input == 21 and res.points.n + len(res.points.dropped) == 21
    # beside the published reference trends
    assert res.figures["yours: tokens_per_usd"]["value"] == pytest.approx(4.0)
    for name, t in REFERENCE_TRENDS.items():
        assert res.figures[f"reference: {name}"]["value"] == t["factor_per_year"]


def test_without_a_quality_bound_the_worse_quality_runs_set_the_records(db):
    res = local_trend(h.list_records(db), n_boot=0)
    assert res.selection["excluded"]["above --max-bits-per-byte"] == 0
    assert res.selection["excluded"]["speed disturbed"] == 5
    # the 1.6 bits/byte runs are 30x cheaper each year: same slope, other records
    assert list(res.points.label) == [f"#{4 + 4 * i} tiny big-loss" for i in range(5)]
    assert res.fit.doubling_time_months == pytest.approx(6.0, abs=1e-9)


def test_decode_speed_metric_and_missing_values_are_counted(tmp_path):
    db = tmp_path / "h.sqlite"
    for i, d in enumerate(["2024-01-01", "2025-01-01", "2026-01-01"]):
        _record(db, d, [_row("a", 1.0, tps=10.0 * 2 ** i), _row("no speed", 1.0)])
    res = local_trend(h.list_records(db), metric="decode_tokens_per_s", n_boot=0)
    assert res.fit.doubling_time_months == pytest.approx(12.0, abs=1e-9)
    assert res.selection["excluded"]["metric missing or <= 0"] == 3


def test_too_few_runs_or_one_date_is_a_clear_error(tmp_path):
    db = tmp_path / "h.sqlite"
    _record(db, "2025-03-01", [_row("a", 1.0), _row("b", 0.5)])
    with pytest.raises(LocalTrendError, match=r"2 usable run record\(s\) of 2 .*at least 3 runs on different dates"):
        local_trend(h.list_records(db))
    _record(db, "2025-03-01", [_row("c", 0.25), _row("d", 0.3, disturbed=True)])
    with pytest.raises(LocalTrendError, match=r"all 3 usable run records .* are on one date \(2025-03-01\); "
                                              "a doubling time needs runs on different dates"):
        local_trend(h.list_records(db))
    _record(db, "2025-04-01", [_row("e", 0.1)])  # 2 dates -> 2 best-so-far records only
    with pytest.raises(LocalTrendError, match=r"only 2 best-so-far record\(s\) among 4 usable runs on 2 dates"):
        local_trend(h.list_records(db))
    with pytest.raises(LocalTrendError, match="--metric 'flops': choose one of tokens_per_usd, decode_tokens_per_s"):
        local_trend(h.list_records(db), metric="flops")


# --------------------------------------------------------------------------- the CLI
def _app():
    from moorelab.cli import app

    return app


def test_trend_local_cli_json(db, tmp_path):
    r = CliRunner().invoke(_app(), ["trend", "local", "--metric", "tokens_per_usd", "--max-bits-per-byte",
                                    "1.2", "--db", str(db), "--n-boot", "100", "--json", "--no-plot"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["fit"]["doubling_time_months"]["value"] == pytest.approx(6.0)
    assert out["selection"]["excluded"]["speed disturbed"] == 5
    assert out["figures"]["reference: algorithmic_efficiency"]["value"] == 2.9


def test_history_list_json_csv_round_trip_and_rm(tmp_path):
    db = tmp_path / "h.sqlite"
    _record(db, "2025-01-01", [_row("a", 2.0), _row("b", 1.0, disturbed=True)])
    _record(db, "2025-02-01", [_row("c", 0.5)])
    records = h.list_records(db)
    runner, app = CliRunner(), _app()

    r = runner.invoke(app, ["history", "--json", "--db", str(db)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["records"] == records and out["schema_version"] == 2 and out["database"] == str(db)
    assert out["units"]["usd_per_million_tokens"] == "$/1M tokens (decode)"

    r = runner.invoke(app, ["history", "--csv", "--db", str(db)])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert list(rows[0]) == list(h.COLUMNS)
    assert [(x["id"], x["row_name"], float(x["usd_per_million_tokens"]), x["speed_disturbed"])
            for x in rows] == [("1", "a", 2.0, "0"), ("2", "b", 1.0, "1"), ("3", "c", 0.5, "0")]
    assert rows[0]["perplexity"] == ""  # NULL -> empty cell

    r = runner.invoke(app, ["history", "--db", str(db)])
    assert r.exit_code == 0 and "3 record(s)" in r.stdout

    r = runner.invoke(app, ["history", "rm", "2", "--db", str(db)])
    assert r.exit_code == 0 and r.stdout.startswith("removed #2: 2025-01-01")
    assert [x["id"] for x in h.list_records(db)] == [1, 3]
    r = runner.invoke(app, ["history", "--db", str(db), "rm", "3"])  # --db before the sub-command
    assert r.exit_code == 0
    assert [x["id"] for x in h.list_records(db)] == [1]


def test_history_add_records_an_existing_results_json(tmp_path):
    db = tmp_path / "h.sqlite"
    res = tmp_path / "results.json"
    res.write_text(json.dumps({"schema": "moorelab.improve/1", "model": {"name": "tiny"},
                               "rows": [_row("baseline", 1.0), _row("int8", 0.5)]}))
    r = CliRunner().invoke(_app(), ["history", "add", str(res), "--date", "2025-05-06", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "recorded 2 row(s)" in r.stdout
    recs = h.list_records(db)
    assert [(x["command"], x["recorded_at"], x["row_name"]) for x in recs] == [
        ("improve", "2025-05-06T00:00:00+00:00", "baseline"), ("improve", "2025-05-06T00:00:00+00:00", "int8")]
    assert recs[0]["results_path"] == str(res.resolve())


def _main(*args, env):
    return subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", *args],
                          capture_output=True, text=True, env=env)


def test_bad_input_is_one_line_exit_2_and_the_file_is_kept(tmp_path):
    import os

    env = {**os.environ, "MOORELAB_HISTORY": str(tmp_path / "h.sqlite")}
    (tmp_path / "h.sqlite").write_text("not a database\n" * 50)
    before = (tmp_path / "h.sqlite").read_bytes()
    for args in (["history"], ["history", "rm", "1"], ["trend", "local", "--no-plot"]):
        r = _main(*args, env=env)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: history database ") and "not a readable" in lines[0]
    assert (tmp_path / "h.sqlite").read_bytes() == before
    env["MOORELAB_HISTORY"] = str(tmp_path / "empty.sqlite")
    r = _main("trend", "local", "--no-plot", env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == (f"error: no runs recorded in {tmp_path / 'empty.sqlite'} yet (every "
                                "`moorelab run` and `moorelab improve` adds its rows); a doubling time needs "
                                "at least 3 runs on different dates")
    assert not (tmp_path / "empty.sqlite").exists()  # reading created nothing
    r = _main("history", "rm", "4", env=env)
    assert r.returncode == 2 and "does not exist yet" in r.stderr


@pytest.mark.parametrize("module, command", [("moorelab/report/run.py", "run"),
                                             ("moorelab/report/improve_job.py", "improve")])
def test_each_job_records_its_rows_after_writing_results_json(module, command):
    """A merge guard: the job's one history call is present, names its job, and comes after
    results.json is written (the jobs themselves take minutes; their run is not repeated here)."""
    import ast
    from pathlib import Path

    src = (Path(__file__).resolve().parents[2] / module).read_text()
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call)]
    hook = [c for c in calls if getattr(c.func, "id", None) == "record_job"]
    writes = [c for c in calls if getattr(c.func, "id", None) == "write_json"]
    assert len(hook) == 1 and writes
    assert {k.arg: getattr(k.value, "value", None) for k in hook[0].keywords}["command"] == command
    assert hook[0].lineno > max(w.lineno for w in writes)
