"""The run-history store: schema, migration, atomic append, and refusal of unusable files."""

import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from moorelab.measure import history as h
from moorelab.measure.history import HistoryError

RESULTS = {
    "schema": "moorelab.run/1",
    "model": {"name": "smollm2-135m", "source": "hf:HuggingFaceTB/SmolLM2-135M"},
    "task": {"text": "Hamlet (first 2000 characters)", "bytes": 2000, "tokens": 512,
             "usd_per_hour_assumed": {"value": 0.1, "unit": "$/hour"}},
    "environment": {"cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 2, "platform": "Linux-test"},
    "rows": [
        {"name": "float32", "technique": "none", "kernel": "torch fp32 matmul",
         "metrics": {"bits_per_byte": {"value": 0.93, "unit": "bits/byte"},
                     "perplexity": {"value": 20.5, "unit": "1"},
                     "decode_tokens_per_s": {"value": 40.0, "unit": "tokens/s"},
                     "prefill_tokens_per_s": {"value": 400.0, "unit": "tokens/s"},
                     "usd_per_million_tokens_decode": {"value": 0.694, "unit": "$/1M tokens"},
                     "decode_cpu_share": {"value": 0.98, "unit": "1"}},
         "speed_disturbed": False},
        {"name": "int8", "technique": "int8", "kernel": "int8 gemv",
         "metrics": {"bits_per_byte": {"value": 0.95, "unit": "bits/byte"},
                     "decode_tokens_per_s": {"value": float("nan"), "unit": "tokens/s"},
                     "usd_per_million_tokens_decode": {"value": 0.35, "unit": "$/1M tokens"}},
         "speed_disturbed": True},
    ],
}

#: the first layout (schema version 1), written out as it was, to test the migration from it
V1_DDL = """CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, recorded_at TEXT NOT NULL,
            command TEXT, model TEXT, technique TEXT, bits_per_byte REAL, decode_tokens_per_s REAL,
            usd_per_million_tokens REAL, results_path TEXT)"""


def _version(path):
    with sqlite3.connect(path) as c:
        return c.execute("PRAGMA user_version").fetchone()[0]


def _columns(path):
    with sqlite3.connect(path) as c:
        return [r[1] for r in c.execute("PRAGMA table_info(runs)")]


def test_default_path_is_in_the_cache_unless_overridden(tmp_path, monkeypatch):
    monkeypatch.delenv("MOORELAB_HISTORY", raising=False)
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "cache"))
    assert h.default_path() == tmp_path / "cache" / "history.sqlite"
    monkeypatch.setenv("MOORELAB_HISTORY", str(tmp_path / "elsewhere.sqlite"))
    assert h.default_path() == tmp_path / "elsewhere.sqlite"


def test_new_database_has_the_current_schema_and_every_column(tmp_path):
    db = tmp_path / "sub" / "history.sqlite"
    assert h.list_records(db) == [] and not db.exists()  # reading creates nothing
    ids = h.record_rows(RESULTS, command="run", results_path="/out/results.json", path=db,
                        recorded_at="2026-01-02T03:04:05+00:00")
    assert ids == [1, 2]
    assert _version(db) == h.SCHEMA_VERSION == 2
    assert sorted(_columns(db)) == sorted(h.COLUMNS)


def test_records_carry_every_field_and_missing_metrics_are_null_and_named(tmp_path):
    db = tmp_path / "h.sqlite"
    h.record_rows(RESULTS, command="run", results_path="/out/results.json", path=db,
                  recorded_at="2026-01-02T03:04:05+00:00")
    a, b = h.list_records(db)
    assert a == {
        "id": 1, "recorded_at": "2026-01-02T03:04:05+00:00", "command": "run",
        "model": "smollm2-135m", "model_source": "hf:HuggingFaceTB/SmolLM2-135M",
        "row_name": "float32", "technique": "none", "kernel": "torch fp32 matmul",
        "task_text": "Hamlet (first 2000 characters)", "task_bytes": 2000, "task_tokens": 512,
        "bits_per_byte": 0.93, "perplexity": 20.5, "decode_tokens_per_s": 40.0,
        "prefill_tokens_per_s": 400.0, "usd_per_million_tokens": 0.694, "usd_per_hour": 0.1,
        "cpu_model": "Test CPU", "cpu_count": 2, "torch_threads": 2, "platform": "Linux-test",
        "decode_cpu_share": 0.98, "speed_disturbed": 0, "missing": None,
        "results_path": "/out/results.json"}
    # NaN decode speed and absent metrics: NULL, named in `missing`, row kept
    assert b["decode_tokens_per_s"] is None and b["perplexity"] is None
    assert b["usd_per_million_tokens"] == 0.35 and b["speed_disturbed"] == 1
    assert b["missing"] == "perplexity,decode_tokens_per_s,prefill_tokens_per_s,decode_cpu_share"


def test_a_row_with_no_metrics_at_all_is_still_recorded():
    rec = h.record_from_row({"name": "x"}, {}, command="eval", results_path=None, recorded_at="2026-01-01")
    assert rec["row_name"] == "x" and rec["command"] == "eval" and rec["speed_disturbed"] is None
    assert rec["missing"].split(",") == list(h.ROW_METRICS)
    assert all(rec[c] is None for c in h.ROW_METRICS.values())


def test_migration_from_version_1_keeps_old_records(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as c:
        c.execute(V1_DDL)
        c.execute("INSERT INTO runs (recorded_at, command, model, technique, bits_per_byte, "
                  "decode_tokens_per_s, usd_per_million_tokens, results_path) "
                  "VALUES ('2025-06-01T00:00:00+00:00', 'run', 'gpt2', 'none', 1.1, 30.0, 0.9, '/r.json')")
        c.execute("PRAGMA user_version = 1")
    [old] = h.list_records(db)
    assert _version(db) == 2 and sorted(_columns(db)) == sorted(h.COLUMNS)
    assert (old["id"], old["model"], old["bits_per_byte"], old["usd_per_million_tokens"]) == (1, "gpt2", 1.1, 0.9)
    assert old["cpu_model"] is None and old["speed_disturbed"] is None  # added columns: NULL
    assert h.record_rows(RESULTS, command="run", path=db) == [2, 3]
    assert [r["id"] for r in h.list_records(db)] == [1, 2, 3]


def test_a_failure_mid_append_leaves_no_partial_record(tmp_path, monkeypatch):
    db = tmp_path / "h.sqlite"
    h.record_rows(RESULTS, command="run", path=db)
    real = h._insert
    calls = []

    def second_fails(conn, rec):
        calls.append(rec)
        if len(calls) == 2:
            raise RuntimeError("disk pulled out")
        return real(conn, rec)

    monkeypatch.setattr(h, "_insert", second_fails)
    with pytest.raises(RuntimeError):
        h.record_rows(RESULTS, command="improve", path=db)
    assert len(calls) == 2  # the first row WAS inserted inside the transaction ...
    assert [r["command"] for r in h.list_records(db)] == ["run", "run"]  # ... and rolled back


def test_a_process_killed_mid_append_leaves_no_partial_record(tmp_path):
    db = tmp_path / "h.sqlite"
    h.record_rows(RESULTS, command="run", path=db)
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    script = textwrap.dedent(f"""
        import json, os
        from moorelab.measure import history as h
        real = h._insert
        def insert_then_die(conn, rec):
            real(conn, rec)
            os._exit(9)  # killed after one row of two, before COMMIT
        h._insert = insert_then_die
        results = json.load(open({str(tmp_path / "results.json")!r}))
        h.record_rows(results, command="killed", path={str(db)!r})
    """)
    r = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 9
    assert [x["command"] for x in h.list_records(db)] == ["run", "run"]


def test_newer_schema_is_refused_naming_both_versions_and_left_untouched(tmp_path):
    db = tmp_path / "new.sqlite"
    h.record_rows(RESULTS, command="run", path=db)
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA user_version = 7")
    before = db.read_bytes()
    for call in (lambda: h.list_records(db), lambda: h.record_rows(RESULTS, command="run", path=db),
                 lambda: h.remove_record(1, db)):
        with pytest.raises(HistoryError, match=r"schema version 7, newer than this moorelab's 2") as e:
            call()
        assert str(db) in str(e.value)
    assert db.read_bytes() == before


def test_locked_database_is_refused_within_the_timeout(tmp_path):
    db = tmp_path / "h.sqlite"
    h.record_rows(RESULTS, command="run", path=db)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process writing
    try:
        for call in (lambda: h.list_records(db, timeout_s=0.2),
                     lambda: h.record_rows(RESULTS, command="run", path=db, timeout_s=0.2)):
            t0 = time.monotonic()
            with pytest.raises(HistoryError, match=r"is locked by another process \(waited 0.2 s\)") as e:
                call()
            assert time.monotonic() - t0 < 1.5
            assert str(db) in str(e.value) and "\n" not in str(e.value)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert len(h.list_records(db)) == 2  # nothing lost, nothing added


def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path):
    db = tmp_path / "h.sqlite"
    db.write_text("these are my notes, not a database\n" * 20)
    before = db.read_bytes()
    with pytest.raises(HistoryError, match="is not a readable SQLite database .*left untouched"):
        h.list_records(db)
    with pytest.raises(HistoryError, match="is not a readable SQLite database"):
        h.record_rows(RESULTS, command="run", path=db)
    assert db.read_bytes() == before


def test_a_foreign_sqlite_database_is_refused_and_kept(tmp_path):
    db = tmp_path / "other.sqlite"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE invoices (n INTEGER)")
        c.execute("INSERT INTO invoices VALUES (42)")
    with pytest.raises(HistoryError, match=r"not a moorelab history \(tables: invoices\)"):
        h.record_rows(RESULTS, command="run", path=db)
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT n FROM invoices").fetchall() == [(42,)]
        assert c.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]


def test_a_folder_in_the_way_is_one_clear_error(tmp_path):
    with pytest.raises(HistoryError, match="is a folder, not a file"):
        h.record_rows(RESULTS, command="run", path=tmp_path)


def test_remove_record_names_the_ids_present(tmp_path):
    db = tmp_path / "h.sqlite"
    h.record_rows(RESULTS, command="run", path=db)
    assert h.remove_record(1, db)["row_name"] == "float32"
    assert [r["id"] for r in h.list_records(db)] == [2]
    with pytest.raises(HistoryError, match=r"no history record #1 in .* \(1 record\(s\), ids 2-2\)"):
        h.remove_record(1, db)
    with pytest.raises(HistoryError, match="does not exist yet"):
        h.remove_record(1, tmp_path / "none.sqlite")


def test_record_job_warns_instead_of_failing_a_finished_job(tmp_path, monkeypatch, capsys):
    db = tmp_path / "h.sqlite"
    db.write_text("not a database" * 10)
    monkeypatch.setenv("MOORELAB_HISTORY", str(db))
    assert h.record_job(RESULTS, command="run", results_path="/out/results.json") == []
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: run not recorded in the history: history database")
    assert "moorelab history add /out/results.json" in err[0]
    monkeypatch.setenv("MOORELAB_HISTORY", str(tmp_path / "ok.sqlite"))
    assert h.record_job(RESULTS, command="run") == [1, 2]
    monkeypatch.setenv("MOORELAB_NO_HISTORY", "1")
    assert h.record_job(RESULTS, command="run") == []
    assert len(h.list_records(tmp_path / "ok.sqlite")) == 2


def test_non_finite_numbers_become_null():
    assert h._num(float("inf")) is None and h._num(math.nan) is None and h._num("12") == 12.0
    assert h._num(True) is None and h._num(3) == 3
