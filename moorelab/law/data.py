"""Trend data: strict loading with every input row accounted for.

Every loader returns a :class:`TrendPoints` (dated positive values + labels) together with the
rows it could not use, each as a :class:`DroppedRow` with a reason. Structural problems (file
missing, column missing) raise :class:`moorelab.errors.DataError` naming the file and column;
a date that does not parse raises DataError naming the file, row and field (dates are never
silently coerced). Row numbers are spreadsheet rows: the header is row 1, the first data row is
row 2 (``pandas index + 2``).

Public data (see ``../shared/data/trends/SOURCES.md``; Epoch AI data are CC-BY 4.0, credit
"Epoch AI"): the file layout under a data directory is the one of ``shared/data/trends``, e.g.
``DIR/epoch-training-cost-trends/All_ML_Systems_-_full_view.csv``. The default directory is the
fetch cache (``moorelab data fetch``), see :func:`default_data_dir`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from moorelab.errors import DataError
from moorelab.law.dates import ISO_DATE, decimal_year, parse_date

EPOCH_CREDIT = "Data: Epoch AI (CC-BY 4.0), epoch.ai"


# --------------------------------------------------------------------------- row accounting
@dataclass(frozen=True)
class DroppedRow:
    """One input row not used, and why.

    Attributes:
        row: spreadsheet row number in ``file`` (header = 1) or position for in-memory input.
        label: the row's name (model, chip, ...).
        reason: one line, e.g. "training compute missing" or "before window start 2010-01-01".
        file: the file the row came from (may be empty for in-memory data).
    """

    row: int | str
    label: str
    reason: str
    file: str = ""

    def to_dict(self) -> dict:
        return {"row": self.row, "label": self.label, "reason": self.reason, "file": self.file}


@dataclass
class TrendPoints:
    """Dated positive values ready for :func:`moorelab.law.fit.fit_growth`.

    Attributes:
        label: shape (n,), names (str).
        date: shape (n,), ISO dates (str, YYYY-MM-DD).
        year: shape (n,), decimal years (float).
        value: shape (n,), metric values (> 0, unit in ``unit``).
        row: shape (n,), source row numbers (spreadsheet rows, header = 1).
        unit: unit of ``value`` (e.g. "FLOP", "FLOP/s per $").
        source: file(s) the points came from.
        n_input: rows read from the source before any drop.
        dropped: rows not used, each with a reason (``n_input == n + len(dropped)``).
        extra: optional per-point columns (dict name -> array shape (n,)).
    """

    label: np.ndarray
    date: np.ndarray
    year: np.ndarray
    value: np.ndarray
    row: np.ndarray
    unit: str
    source: str
    n_input: int
    dropped: list[DroppedRow] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.year.size)

    def check_accounting(self) -> None:
        """Raise AssertionError unless every input row is used or dropped exactly once."""
        assert self.n + len(self.dropped) == self.n_input, (
            f"{self.source}: {self.n} used + {len(self.dropped)} dropped != {self.n_input} read")

    def subset(self, keep: np.ndarray, reasons: Sequence[str] | None = None) -> "TrendPoints":
        """Keep points where ``keep`` (bool, shape (n,)); the others are dropped with
        ``reasons[i]`` (one per point, only read where ``keep`` is False)."""
        keep = np.asarray(keep, bool)
        new_drops = list(self.dropped)
        for i in np.flatnonzero(~keep):
            reason = reasons[i] if reasons is not None else "not selected"
            new_drops.append(DroppedRow(int(self.row[i]), str(self.label[i]), reason,
                                        self.source))
        return replace(
            self, label=self.label[keep], date=self.date[keep], year=self.year[keep],
            value=self.value[keep], row=self.row[keep], dropped=new_drops,
            extra={k: np.asarray(v)[keep] for k, v in self.extra.items()})

    def dropped_summary(self) -> dict[str, int]:
        """Counts of dropped rows by reason (reasons with row-specific text are kept whole)."""
        out: dict[str, int] = {}
        for d in self.dropped:
            key = d.reason.split(" (")[0]
            out[key] = out.get(key, 0) + 1
        return out

    @classmethod
    def from_arrays(cls, label, date, value, *, unit: str = "", source: str = "<arrays>",
                    dropped: Iterable[DroppedRow] = ()) -> "TrendPoints":
        """Build from ISO date strings (parsed strictly) and values (checked: finite, > 0;
        others are dropped with a reason)."""
        frame = pd.DataFrame({"label": list(label), "date": list(date), "value": list(value)})
        frame.index = np.arange(len(frame))
        return points_from_frame(frame, label_col="label", date_col="date", value_col="value",
                                 unit=unit, file=source, value_name="value",
                                 dropped=list(dropped))


# --------------------------------------------------------------------------- reading helpers
def read_table(path: str | os.PathLike, *, required: Sequence[str] = (),
               low_memory: bool = False) -> pd.DataFrame:
    """Read a CSV strictly: the file must exist and hold every ``required`` column.

    The returned frame's index is the spreadsheet row (header = 1, first data row = 2).

    Raises:
        DataError: "<file>: no such file" / "<file>: missing column(s) 'A', 'B'" /
            "<file>: cannot read CSV: ...".
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        df = pd.read_csv(p, low_memory=low_memory)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{p}: cannot read CSV: {str(exc).splitlines()[0]}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing column(s) " + ", ".join(repr(c) for c in missing))
    df.index = np.arange(2, len(df) + 2)
    return df


def to_number(value: object) -> float:
    """Parse a numeric cell: plain numbers, '1e23', '$5,412.00', '1,234'. NaN if empty.

    Raises ValueError for text that is not a number (callers turn it into a drop or error).
    """
    if value is None:
        return float("nan")
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip().replace(",", "").replace("$", "").replace("\u00a0", "")
    if text == "" or text.lower() in ("nan", "none", "null"):
        return float("nan")
    return float(text)


def points_from_frame(df: pd.DataFrame, *, label_col: str, date_col: str,
                      value_col: str | None = None, values: pd.Series | None = None,
                      unit: str = "", file: str = "", value_name: str | None = None,
                      date_fmt: str = ISO_DATE, missing_date: str = "error",
                      dropped: list[DroppedRow] | None = None,
                      extra_cols: Sequence[str] = (), dedupe: bool = True) -> TrendPoints:
    """Turn a table into :class:`TrendPoints`, accounting for every row.

    Args:
        df: table whose index is the spreadsheet row number (see :func:`read_table`).
        label_col, date_col: columns with the point name and the date (``date_fmt``).
        value_col or values: the metric column, or an already-derived series aligned on ``df``.
        missing_date: "error" (DataError naming the row) or "drop" (a reported drop).
        dropped: rows already dropped upstream (carried over; counted in ``n_input``).
        extra_cols: columns copied into ``TrendPoints.extra``.
        dedupe: drop exact duplicates (same label, date and value) with a reason naming the
            first occurrence.

    Drops (with reasons): value missing, not a number, zero or negative (log scale), duplicate.
    Raises DataError for an unparseable date (names file, row, field).
    """
    dropped = list(dropped or [])
    n_input = len(df) + len(dropped)
    vname = value_name or value_col or "value"
    raw = values if values is not None else df[value_col]
    labels, dates, years, vals, rows = [], [], [], [], []
    extras: dict[str, list] = {c: [] for c in extra_cols}
    seen: dict[tuple, int] = {}
    for r in df.index:
        label = str(df.at[r, label_col]) if pd.notna(df.at[r, label_col]) else f"<row {r}>"
        dv = df.at[r, date_col]
        if (dv is None or (isinstance(dv, float) and np.isnan(dv)) or str(dv).strip() == "") \
                and missing_date == "drop":
            dropped.append(DroppedRow(int(r), label, f"{date_col} missing", file))
            continue
        d = parse_date(dv, fmt=date_fmt, file=file or "<table>", row=r, field=date_col)
        try:
            v = to_number(raw.at[r])
        except ValueError:
            dropped.append(DroppedRow(int(r), label, f"{vname} not a number ({raw.at[r]!r})",
                                      file))
            continue
        if np.isnan(v):
            dropped.append(DroppedRow(int(r), label, f"{vname} missing", file))
            continue
        if not np.isfinite(v) or v <= 0:
            dropped.append(DroppedRow(int(r), label,
                                      f"{vname} <= 0 or infinite, unusable on a log scale ({v})",
                                      file))
            continue
        key = (label, d.isoformat(), v)
        if dedupe and key in seen:
            dropped.append(DroppedRow(int(r), label, f"duplicate of row {seen[key]}", file))
            continue
        seen[key] = int(r)
        labels.append(label)
        dates.append(d.isoformat())
        years.append(decimal_year(d))
        vals.append(v)
        rows.append(int(r))
        for c in extra_cols:
            extras[c].append(df.at[r, c])
    return TrendPoints(
        label=np.array(labels, dtype=object), date=np.array(dates, dtype=object),
        year=np.array(years, dtype=float), value=np.array(vals, dtype=float),
        row=np.array(rows, dtype=int), unit=unit, source=file, n_input=n_input,
        dropped=dropped, extra={k: np.array(v, dtype=object) for k, v in extras.items()})


def drop_where(df: pd.DataFrame, mask: pd.Series | np.ndarray, reason: str | Callable,
               *, label_col: str, file: str, dropped: list[DroppedRow]) -> pd.DataFrame:
    """Remove rows where ``mask`` is True, appending a DroppedRow for each to ``dropped``.

    ``reason`` is a string or a function row -> string.
    """
    mask = np.asarray(mask, bool)
    for r in df.index[mask]:
        label = str(df.at[r, label_col]) if pd.notna(df.at[r, label_col]) else f"<row {r}>"
        text = reason(df.loc[r]) if callable(reason) else reason
        dropped.append(DroppedRow(int(r), label, text, file))
    return df.loc[~mask]


def default_data_dir() -> Path:
    """Where trend data are read from by default: ``$MOORELAB_DATA`` if set, else the fetch
    cache ``cache_dir()/trends`` (filled by ``moorelab data fetch``)."""
    env = os.environ.get("MOORELAB_DATA")
    if env:
        return Path(env)
    from moorelab.paths import cache_dir

    return cache_dir() / "trends"
