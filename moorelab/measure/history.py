"""Run history: one record per measured row of every job, in a local SQLite database.

Every ``moorelab run`` and ``moorelab improve`` appends one record per results row (the
baseline and each variant) once its ``results.json`` is written, so that a user's own runs
over weeks become a dated series (``moorelab history``, ``moorelab trend local``). Jobs added
later (``eval``, ``train``) call :func:`record_job` the same way, with their results dict.

Where: ``$MOORELAB_HISTORY`` if set (a file path), else ``history.sqlite`` in the cache folder
(:func:`moorelab.paths.cache_dir`, i.e. ``$MOORELAB_CACHE`` or ``~/.cache/moorelab``).

A record (columns of :data:`COLUMNS`, units in the names or listed there): the UTC date, the
job, the model and the row (name, technique, kernel; no git state), the task (description,
bytes, tokens), quality (bits per byte, perplexity), speed (decode and prefill tokens/s),
cost ($ per 1M decoded tokens and the $/hour assumed), the machine (CPU model, cores, torch
threads, platform), the decode CPU share, the disturbed flag and the results.json path. A row
missing a metric is stored with NULL there and the metric's name in ``missing`` -- never dropped.

Safety of the user's file:

* schema versioned with ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`); older layouts are
  migrated step by step (:data:`MIGRATIONS`) in one transaction; a newer version is refused;
* every append is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``): a run killed or failing
  mid-append leaves no partial record;
* a locked database (another process writing) waits at most ``timeout_s`` seconds, then raises
  :class:`HistoryError` naming the file; a file that is not an SQLite database, or an SQLite
  database that is not a moorelab history, is refused and never overwritten or deleted.

Standard library only (``sqlite3``).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from moorelab.errors import MoorelabError
from moorelab.paths import cache_dir

#: the layout this code writes; a database with a higher ``user_version`` is refused
SCHEMA_VERSION = 2

#: default seconds to wait for another process's lock before giving up
DEFAULT_TIMEOUT_S = 2.0

#: statements that bring a database from version ``v - 1`` to ``v``; a new database runs them
#: all, from version 0 (empty file). Version 1 was the first layout (one line per row: date, job,
#: model, technique, the three headline metrics, the results path); version 2 adds the task, the
#: machine, the remaining metrics, the CPU share, the disturbed flag and the list of missing metrics.
MIGRATIONS: dict[int, list[str]] = {
    1: ["""CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            recorded_at TEXT NOT NULL,
            command TEXT,
            model TEXT,
            technique TEXT,
            bits_per_byte REAL,
            decode_tokens_per_s REAL,
            usd_per_million_tokens REAL,
            results_path TEXT)"""],
    2: [f"ALTER TABLE runs ADD COLUMN {c}" for c in (
        "model_source TEXT", "row_name TEXT", "kernel TEXT",
        "task_text TEXT", "task_bytes INTEGER", "task_tokens INTEGER",
        "perplexity REAL", "prefill_tokens_per_s REAL", "usd_per_hour REAL",
        "cpu_model TEXT", "cpu_count INTEGER", "torch_threads INTEGER", "platform TEXT",
        "decode_cpu_share REAL", "speed_disturbed INTEGER", "missing TEXT")],
}

#: record fields in display order -> unit ("" for text)
COLUMNS: dict[str, str] = {
    "id": "",
    "recorded_at": "UTC ISO 8601",
    "command": "",
    "model": "",
    "model_source": "",
    "row_name": "",
    "technique": "",
    "kernel": "",
    "task_text": "",
    "task_bytes": "bytes",
    "task_tokens": "tokens",
    "bits_per_byte": "bits/byte",
    "perplexity": "1 (per token)",
    "decode_tokens_per_s": "tokens/s",
    "prefill_tokens_per_s": "tokens/s",
    "usd_per_million_tokens": "$/1M tokens (decode)",
    "usd_per_hour": "$/hour (assumed)",
    "cpu_model": "",
    "cpu_count": "cores",
    "torch_threads": "threads",
    "platform": "",
    "decode_cpu_share": "CPU s / (wall s x threads)",
    "speed_disturbed": "1 = disturbed, 0 = not, NULL = unknown",
    "missing": "metrics absent from the row (comma-separated)",
    "results_path": "",
}

#: results-row metric -> record column, for the metrics a record keeps
ROW_METRICS: dict[str, str] = {
    "bits_per_byte": "bits_per_byte",
    "perplexity": "perplexity",
    "decode_tokens_per_s": "decode_tokens_per_s",
    "prefill_tokens_per_s": "prefill_tokens_per_s",
    "usd_per_million_tokens_decode": "usd_per_million_tokens",
    "decode_cpu_share": "decode_cpu_share",
}


class HistoryError(MoorelabError):
    """The history database cannot be used (locked, unreadable, corrupted, newer schema,
    unknown record id). The message names the file; the file is left as it was."""


def default_path() -> Path:
    """The history database: ``$MOORELAB_HISTORY`` if set, else ``<cache>/history.sqlite``."""
    env = os.environ.get("MOORELAB_HISTORY")
    return Path(env) if env else cache_dir() / "history.sqlite"


# --------------------------------------------------------------------------- connection
def _explain(path: Path, exc: sqlite3.Error, timeout_s: float) -> str:
    msg = str(exc)
    low = msg.lower()
    if "locked" in low or "busy" in low:
        return (f"history database {path} is locked by another process (waited {timeout_s:g} s); "
                "try again when it has finished -- nothing was changed")
    if "not a database" in low or "malformed" in low or "encrypted" in low:
        return (f"history database {path} is not a readable SQLite database ({msg}); it was left "
                "untouched -- move it aside (or set MOORELAB_HISTORY) to start a new history")
    if "readonly" in low or "read-only" in low:
        return f"history database {path} is read-only ({msg}); nothing was changed"
    if "unable to open" in low:
        return f"history database {path} cannot be opened ({msg}); check the folder and permissions"
    return f"history database {path}: {msg}"


@contextmanager
def _guard(path: Path, timeout_s: float) -> Iterator[None]:
    """Turn sqlite3 errors into one :class:`HistoryError` line naming the file."""
    try:
        yield
    except sqlite3.Error as exc:
        raise HistoryError(_explain(path, exc, timeout_s)) from None


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the database to :data:`SCHEMA_VERSION` in one transaction (no-op when current)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise HistoryError(f"history database {path} has schema version {version}, newer than this "
                           f"moorelab's {SCHEMA_VERSION}; upgrade moorelab to use it (the file was "
                           "left untouched)")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
        if version == 0:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
            if tables:
                raise HistoryError(f"history database {path} is an SQLite database but not a moorelab "
                                   f"history (tables: {', '.join(tables)}); it was left untouched")
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[v]:
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@contextmanager
def connect(path: Path | str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S,
            create: bool = True) -> Iterator[sqlite3.Connection | None]:
    """Open the history database, migrated to :data:`SCHEMA_VERSION`.

    Args:
        path: database file (default :func:`default_path`).
        timeout_s: seconds to wait for another process's lock.
        create: create the file if missing; when False a missing file yields ``None``.

    Yields:
        An ``sqlite3.Connection`` in autocommit mode (callers open their own transactions), or
        None (missing file, ``create=False``).

    Raises:
        HistoryError: locked past ``timeout_s``, not a database, a foreign SQLite database, a
            newer schema, a folder in the way, unreadable.
    """
    path = Path(path) if path is not None else default_path()
    if path.is_dir():
        raise HistoryError(f"history database {path} is a folder, not a file")
    if not path.exists():
        if not create:
            yield None
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise HistoryError(f"history database {path}: cannot create its folder ({exc.strerror})") from None
    with _guard(path, timeout_s):
        conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None)
    try:
        with _guard(path, timeout_s):
            _migrate(conn, path)
        with _guard(path, timeout_s):
            yield conn
    finally:
        conn.close()


# --------------------------------------------------------------------------- records
def _num(v) -> float | int | None:
    """A finite number or None (NaN, inf, text, bool and missing become None)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _value(x):
    """The value of a ``{"value", "unit"}`` figure, or the bare value."""
    return x.get("value") if isinstance(x, dict) else x


def utc_now() -> str:
    """The current UTC time, ISO 8601 with seconds (e.g. ``2026-11-30T03:53:20+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def record_from_row(row: dict, results: dict, *, command: str, results_path: str | Path | None,
                    recorded_at: str | None = None) -> dict:
    """One history record (keys of :data:`COLUMNS` but ``id``) from a results row.

    Args:
        row: a results row (:mod:`moorelab.measure.row`): ``name``, ``technique``, ``kernel``,
            ``metrics`` ({name: {"value", "unit"}}), ``speed_disturbed``.
        results: the job's results dict (``model``, ``task``, ``environment`` are read when present).
        command: the job ("run", "improve", "eval", "train").
        results_path: where results.json was written (None if nowhere).
        recorded_at: UTC ISO date (default now).

    Returns:
        The record; absent or non-finite metrics are None and named in ``missing``.
    """
    model = results.get("model") or {}
    task = results.get("task") or {}
    env = results.get("environment") or {}
    metrics = row.get("metrics") or {}
    rec: dict = {
        "recorded_at": recorded_at or utc_now(),
        "command": command,
        "model": model.get("name") if isinstance(model, dict) else str(model),
        "model_source": model.get("source") if isinstance(model, dict) else None,
        "row_name": row.get("name"),
        "technique": row.get("technique"),
        "kernel": row.get("kernel"),
        "task_text": task.get("text"),
        "task_bytes": _num(task.get("bytes")),
        "task_tokens": _num(task.get("tokens")),
        "usd_per_hour": _num(_value(task.get("usd_per_hour_assumed"))),
        "cpu_model": env.get("cpu_model"),
        "cpu_count": _num(env.get("cpu_count")),
        "torch_threads": _num(env.get("torch_threads")),
        "platform": env.get("platform"),
        "results_path": None if results_path is None else str(results_path),
    }
    missing = []
    for metric, column in ROW_METRICS.items():
        v = _num(_value(metrics.get(metric)))
        rec[column] = v
        if v is None:
            missing.append(metric)
    disturbed = row.get("speed_disturbed")
    rec["speed_disturbed"] = None if disturbed is None else int(bool(disturbed))
    rec["missing"] = ",".join(missing) or None
    return rec


def _insert(conn: sqlite3.Connection, rec: dict) -> int:
    cols = [c for c in COLUMNS if c != "id"]
    cur = conn.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                       [rec.get(c) for c in cols])
    return int(cur.lastrowid)


def append_records(records: list[dict], path: Path | str | None = None, *,
                   timeout_s: float = DEFAULT_TIMEOUT_S) -> list[int]:
    """Append records in ONE transaction: all are stored or none (a failure rolls back).

    Args:
        records: dicts with keys of :data:`COLUMNS` (``id`` ignored; absent keys stored as NULL).
        path: database file (default :func:`default_path`).
        timeout_s: seconds to wait for a lock.

    Returns:
        The new record ids, in order.

    Raises:
        HistoryError: see :func:`connect`; nothing is written in that case.
    """
    with connect(path, timeout_s=timeout_s) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = [_insert(conn, r) for r in records]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return ids


def record_rows(results: dict, *, command: str, results_path: str | Path | None = None,
                path: Path | str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                recorded_at: str | None = None) -> list[int]:
    """Append one record per row of a job's results (strict: errors raise).

    Args:
        results: the dict written to results.json; its ``rows`` are recorded.
        command: the job ("run", "improve", "eval", "train").
        results_path: the results.json written (stored as given).
        path: database file (default :func:`default_path`).
        timeout_s: seconds to wait for a lock.
        recorded_at: UTC ISO date shared by all the rows (default now).

    Returns:
        The new record ids.

    Raises:
        HistoryError: database unusable (nothing written).
    """
    when = recorded_at or utc_now()
    recs = [record_from_row(r, results, command=command, results_path=results_path, recorded_at=when)
            for r in results.get("rows") or []]
    return append_records(recs, path, timeout_s=timeout_s)


def record_job(results: dict, *, command: str, results_path: str | Path | None = None) -> list[int]:
    """The one call a job makes at its very end, after results.json is written.

    Like :func:`record_rows`, but a history that cannot be written does not fail a job whose
    results are already on disk: the reason is printed as one ``warning:`` line on stderr (with
    the command that adds the results later) and ``[]`` is returned. Set ``MOORELAB_NO_HISTORY=1``
    to record nothing. A note of what was recorded goes to stderr (stdout may carry ``--json``).

    Returns:
        The new record ids ([] when nothing was recorded).
    """
    if os.environ.get("MOORELAB_NO_HISTORY", "").strip() not in ("", "0"):
        return []
    try:
        ids = record_rows(results, command=command, results_path=results_path)
    except MoorelabError as exc:
        hint = f" (add it later: moorelab history add {results_path})" if results_path else ""
        print(f"warning: run not recorded in the history: {exc}{hint}", file=sys.stderr)
        return []
    if ids:
        print(f"history: recorded {len(ids)} row(s) as #{ids[0]}-#{ids[-1]} in {default_path()}",
              file=sys.stderr)
    return ids


def list_records(path: Path | str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> list[dict]:
    """Every record, oldest first (by id), as dicts keyed like :data:`COLUMNS`.

    A missing database is an empty history (nothing is created).

    Raises:
        HistoryError: see :func:`connect`.
    """
    with connect(path, timeout_s=timeout_s, create=False) as conn:
        if conn is None:
            return []
        cur = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM runs ORDER BY id")
        return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]


def remove_record(record_id: int, path: Path | str | None = None, *,
                  timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Delete one record by id (one transaction).

    Returns:
        The record removed.

    Raises:
        HistoryError: no record with that id (the ids present are named), or see :func:`connect`.
    """
    p = Path(path) if path is not None else default_path()
    with connect(p, timeout_s=timeout_s, create=False) as conn:
        if conn is None:
            raise HistoryError(f"no history record #{record_id}: history database {p} does not exist yet")
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE id = ?", (record_id,)).fetchone()
            if row is None:
                lo, hi, n = conn.execute("SELECT MIN(id), MAX(id), COUNT(*) FROM runs").fetchone()
                have = f"{n} record(s), ids {lo}-{hi}" if n else "no records"
                raise HistoryError(f"no history record #{record_id} in {p} ({have})")
            conn.execute("DELETE FROM runs WHERE id = ?", (record_id,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return dict(zip(COLUMNS, row))
