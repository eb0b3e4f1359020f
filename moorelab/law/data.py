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


def reason_key(reason: str) -> str:
    """A drop reason without its trailing "(...)" detail and with row numbers as "row N", so
    that rows dropped for the same rule count together (e.g. "duplicate of row N")."""
    import re

    key = re.sub(r"\s*\((?:[^()]|\([^()]*\))*\)$", "", reason)
    return re.sub(r"\brow \d+", "row N", key)


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
        files = self.extra.get("file")
        for i in np.flatnonzero(~keep):
            reason = reasons[i] if reasons is not None else "not selected"
            new_drops.append(DroppedRow(int(self.row[i]), str(self.label[i]), reason,
                                        str(files[i]) if files is not None else self.source))
        return replace(
            self, label=self.label[keep], date=self.date[keep], year=self.year[keep],
            value=self.value[keep], row=self.row[keep], dropped=new_drops,
            extra={k: np.asarray(v)[keep] for k, v in self.extra.items()})

    def dropped_summary(self) -> dict[str, int]:
        """Counts of dropped rows by reason; a trailing "(...)" detail and row numbers are
        folded so that e.g. every "duplicate of row N" counts under "duplicate of row N"."""
        out: dict[str, int] = {}
        for d in self.dropped:
            key = reason_key(d.reason)
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
               low_memory: bool = False, as_text: bool = False) -> pd.DataFrame:
    """Read a CSV strictly: the file must exist, hold a header and every ``required`` column.

    The returned frame's index is the spreadsheet row (header = 1, first data row = 2).

    Args:
        as_text: keep every cell as written (str; empty cells NaN) instead of letting pandas
            guess numbers, so that e.g. a date column "2023" stays "2023", not 2023.0.

    Raises:
        DataError: "<file>: no such file" / "<file>: empty file (no header)" /
            "<file>: missing column(s) 'A', 'B' (columns present: 'x', 'y')" /
            "<file>: cannot read CSV: ...".
    """
    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a folder; expected a CSV file")
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    try:
        df = pd.read_csv(p, low_memory=low_memory, dtype=str if as_text else None)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: empty file (no header, no rows)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read CSV: {str(exc).splitlines()[0]}") from None
    check_columns(df, required, p)
    df.index = np.arange(2, len(df) + 2)
    return df


def check_columns(df: pd.DataFrame, required: Sequence[str], file: str | os.PathLike) -> None:
    """Raise DataError "<file>: missing column(s) 'A' (columns present: 'x', 'y')" unless
    ``df`` holds every ``required`` column."""
    missing = [c for c in required if c not in df.columns]
    if missing:
        present = ", ".join(repr(str(c)) for c in df.columns) or "none"
        raise DataError(f"{file}: missing column(s) " + ", ".join(repr(c) for c in missing)
                        + f" (columns present: {present})")


def read_jsonl(path: str | os.PathLike, *, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read JSON lines (one JSON object per line) strictly, like :func:`read_table`.

    Blank lines are skipped; the columns are the union of the objects' keys (a key absent
    from a line is NaN there). The returned frame's index is the line number (first line = 1),
    so row numbers in messages and drops are lines of the file.

    Raises:
        DataError: no such file / empty file (no objects) / "<file> line N: not a JSON object
            (...)" / missing column(s), naming the columns present.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    import json

    records, lines = [], []
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p} line {i}: not valid JSON ({exc.msg}, column {exc.colno})"
                            ) from None
        if not isinstance(obj, dict):
            raise DataError(f"{p} line {i}: not a JSON object (a {type(obj).__name__})")
        records.append(obj)
        lines.append(i)
    if not records:
        raise DataError(f"{p}: empty file (no JSON objects)")
    df = pd.DataFrame.from_records(records)
    check_columns(df, required, p)
    df.index = np.array(lines, dtype=int)
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
    raw = (values if values is not None else df[value_col]).to_numpy()
    row_nums = df["row"].to_numpy() if "row" in df.columns else df.index.to_numpy()
    files = df["file"].to_numpy() if "file" in df.columns else np.full(len(df), file, object)
    lab_v = df[label_col].to_numpy()
    date_v = df[date_col].to_numpy()
    labels, dates, years, vals, rows = [], [], [], [], []
    extras: dict[str, list] = {c: [] for c in extra_cols}
    extra_v = {c: df[c].to_numpy() for c in extra_cols}
    seen: dict[tuple, int] = {}
    kept_files: list[str] = []
    for i in range(len(df)):
        r = int(row_nums[i])
        fi = str(files[i])
        label = str(lab_v[i]) if pd.notna(lab_v[i]) else f"<row {r}>"
        dv = date_v[i]
        if (dv is None or (isinstance(dv, float) and np.isnan(dv)) or str(dv).strip() == "") \
                and missing_date == "drop":
            dropped.append(DroppedRow(r, label, f"{date_col} missing", fi))
            continue
        d = parse_date(dv, fmt=date_fmt, file=fi or "<table>", row=r, field=date_col)
        try:
            v = to_number(raw[i])
        except ValueError:
            dropped.append(DroppedRow(r, label, f"{vname} not a number ({raw[i]!r})", fi))
            continue
        if np.isnan(v):
            dropped.append(DroppedRow(r, label, f"{vname} missing", fi))
            continue
        if not np.isfinite(v) or v <= 0:
            dropped.append(DroppedRow(r, label,
                                      f"{vname} <= 0 or infinite, unusable on a log scale ({v})",
                                      fi))
            continue
        key = (label, d.isoformat(), v)
        if dedupe and key in seen:
            dropped.append(DroppedRow(r, label, f"duplicate of row {seen[key]}", fi))
            continue
        seen[key] = r
        kept_files.append(fi)
        labels.append(label)
        dates.append(d.isoformat())
        years.append(decimal_year(d))
        vals.append(v)
        rows.append(r)
        for c in extra_cols:
            extras[c].append(extra_v[c][i])
    return TrendPoints(
        label=np.array(labels, dtype=object), date=np.array(dates, dtype=object),
        year=np.array(years, dtype=float), value=np.array(vals, dtype=float),
        row=np.array(rows, dtype=int), unit=unit, source=file, n_input=n_input,
        dropped=dropped,
        extra={"file": np.array(kept_files, dtype=object),
               **{k: np.array(v, dtype=object) for k, v in extras.items()}})


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


# --------------------------------------------------------------------------- public data files
NOTABLE_2025 = "epoch-training-cost-trends/All_ML_Systems_-_full_view.csv"
NOTABLE_2024 = "epoch-open-model-trends/All_ML_Systems_-_full_view.csv"
CHIPS = "epoch-training-cost-trends/Chip_dataset-Grid_view.csv"
HARDWARE_PRICES = "epoch-training-cost-trends/Hardware_prices.csv"
LLM_PRICES = ("epoch-llm-benchmark-efficiency/aa_data_with_math5.csv",
              "epoch-llm-benchmark-efficiency/epoch_ai_price_data_not_in_aa_with_benchmarks.csv")
ECI_2026 = "epoch-benchmark-hub-2026-01/epoch_capabilities_index.csv"
ECI_2025 = "epoch-benchmark-stitching/epoch_capabilities_index_2025-11-07.csv"
CHINCHILLA = "epoch-chinchilla-replication/svg_extracted_data.csv"

#: relative path -> dataset name for `moorelab data fetch` hints
_DATASET_OF = {NOTABLE_2025: "notable-models", NOTABLE_2024: "notable-models-2024",
               CHIPS: "hardware", HARDWARE_PRICES: "hardware", LLM_PRICES[0]: "llm-prices",
               LLM_PRICES[1]: "llm-prices", ECI_2026: "capabilities-index",
               ECI_2025: "capabilities-index", CHINCHILLA: "chinchilla"}


@dataclass
class LoadedTable:
    """A checked table: rows usable in principle, plus rows dropped at load with reasons.

    Attributes:
        frame: the rows kept; original columns plus ``row`` (spreadsheet row, header = 1),
            ``file`` (source file) and, for dated tables, ``date`` (ISO str) and ``year``
            (decimal years). Numeric columns named in the loader are float (NaN = empty).
        dropped: rows not kept, each with a reason.
        files: source files read.
        n_input: rows read (``len(frame) + len(dropped)``).
    """

    frame: pd.DataFrame
    dropped: list[DroppedRow]
    files: list[str]
    n_input: int


def data_file(relpath: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Locate ``relpath`` under ``data_dir`` (default :func:`default_data_dir`).

    Raises:
        DataError: "<path>: no such file; run `moorelab data fetch NAME` or pass --data DIR".
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    p = root / relpath
    if not p.is_file():
        name = _DATASET_OF.get(relpath, "all")
        raise DataError(f"{p}: no such file; run `moorelab data fetch {name}` "
                        f"or pass --data DIR (laid out like shared/data/trends)")
    return p


def _load_checked(path: Path, *, required: Sequence[str], label_col: str,
                  date_col: str | None, numeric: Sequence[str] = (),
                  rename: dict[str, str] | None = None) -> LoadedTable:
    """Shared loader: schema check, strict dates (missing -> drop, bad -> DataError),
    numeric parsing (text that is not a number -> drop), exact duplicate rows -> drop."""
    df = read_table(path, required=required)
    n_input = len(df)
    file = str(path)
    dropped: list[DroppedRow] = []

    def label(r):
        v = df.at[r, label_col]
        return str(v) if pd.notna(v) else f"<row {r}>"

    dup = df.duplicated(keep="first")
    if dup.any():
        first = {}
        for r in df.index:
            key = tuple(df.loc[r].astype(str))
            if dup[r]:
                dropped.append(DroppedRow(int(r), label(r), f"duplicate of row {first[key]}",
                                          file))
            else:
                first.setdefault(key, int(r))
        df = df.loc[~dup]
    keep = []
    parsed: dict[str, list] = {c: [] for c in numeric}
    dates, years = [], []
    for r in df.index:
        if date_col is not None:
            dv = df.at[r, date_col]
            if pd.isna(dv) or str(dv).strip() == "":
                dropped.append(DroppedRow(int(r), label(r), f"{date_col} missing", file))
                continue
            d = parse_date(dv, file=file, row=r, field=date_col)
        bad = None
        vals = {}
        for c in numeric:
            try:
                vals[c] = to_number(df.at[r, c])
            except ValueError:
                bad = f"{c} not a number ({df.at[r, c]!r})"
                break
        if bad:
            dropped.append(DroppedRow(int(r), label(r), bad, file))
            continue
        keep.append(r)
        for c in numeric:
            parsed[c].append(vals[c])
        if date_col is not None:
            dates.append(d.isoformat())
            years.append(decimal_year(d))
    out = df.loc[keep].copy()
    for c in numeric:
        out[c] = np.array(parsed[c], dtype=float)
    if date_col is not None:
        out["date"] = dates
        out["year"] = np.array(years, dtype=float)
    out["row"] = np.array(keep, dtype=int)
    out["file"] = file
    if rename:
        out = out.rename(columns=rename)
    return LoadedTable(out.reset_index(drop=True), dropped, [file], n_input)


def load_notable_models(data_dir: str | os.PathLike | None = None, *,
                        snapshot: str = "2025-08") -> LoadedTable:
    """Epoch AI's AI-models table (credit: Epoch AI, CC-BY 4.0).

    Args:
        data_dir: trends directory (layout of shared/data/trends).
        snapshot: "2025-08" (training-cost-trends, column ``Model``) or "2024-10"
            (open-model-trends, column ``System``, renamed to ``Model``).

    Returns:
        LoadedTable with ``Training compute (FLOP)`` and ``Parameters`` as float (FLOP, count),
        ``date``/``year`` from ``Publication date``. Rows without a date are dropped (reported).

    Raises:
        DataError: missing file/column, unparseable date (names file, row, field).
    """
    if snapshot not in ("2025-08", "2024-10"):
        raise DataError(f"notable models: unknown snapshot {snapshot!r} (2025-08 or 2024-10)")
    rel = NOTABLE_2025 if snapshot == "2025-08" else NOTABLE_2024
    name_col = "Model" if snapshot == "2025-08" else "System"
    return _load_checked(
        data_file(rel, data_dir),
        required=(name_col, "Organization", "Publication date", "Notability criteria",
                  "Parameters", "Training compute (FLOP)", "Domain"),
        label_col=name_col, date_col="Publication date",
        numeric=("Parameters", "Training compute (FLOP)"),
        rename=None if name_col == "Model" else {"System": "Model"})


def load_chips(data_dir: str | os.PathLike | None = None) -> LoadedTable:
    """Epoch AI chip dataset (``Chip_dataset-Grid_view.csv``; Epoch AI, CC-BY 4.0).

    Numeric (float): ``Release price (USD)`` ($, nominal; "$5,412.00" parsed), FP32, FP16,
    Tensor-FP16/BF16 performance (FLOP/s). Rows without ``Release date`` are dropped (reported).
    """
    perf = ("FP32 (single precision) performance (FLOP/s)",
            "FP16 (half precision) performance (FLOP/s)",
            "Tensor-FP16/BF16 performance (FLOP/s)")
    return _load_checked(
        data_file(CHIPS, data_dir),
        required=("Hardware name", "Manufacturer", "Type", "Release date",
                  "Release price (USD)", "ML hardware") + perf,
        label_col="Hardware name", date_col="Release date",
        numeric=("Release price (USD)",) + perf)


def load_hardware_prices(data_dir: str | os.PathLike | None = None) -> LoadedTable:
    """Epoch AI hardware prices (purchase and cloud $/chip-hour; Epoch AI, CC-BY 4.0)."""
    num = ("Price per chip-hour (on-demand)", "Price per chip-hour (1-year CUD)",
           "Price per chip-hour (3-year CUD)", "Price (hardware purchase)")
    return _load_checked(
        data_file(HARDWARE_PRICES, data_dir),
        required=("Price date", "Hardware model", "Manufacturer") + num,
        label_col="Hardware model", date_col="Price date", numeric=num)


LLM_BENCHMARKS = ("MMLU", "GPQA Diamond", "HumanEval", "MATH-500", "LMSys Chatbot Arena ELO",
                  "MATH 5")


def load_llm_prices(data_dir: str | os.PathLike | None = None) -> LoadedTable:
    """LLM price-performance tables of Epoch AI's llm-benchmark-efficiency (Mar 2025):
    Artificial Analysis rows (``aa_data_with_math5.csv``) + Epoch AI rows, concatenated.

    Columns: ``Model Name``, ``date``/``year`` (from ``Release Date``),
    ``USD per 1M Tokens`` ($/1M tokens, float), benchmark scores (float, %, Arena Elo),
    ``file`` and ``row`` for every row.
    """
    parts = [
        _load_checked(data_file(rel, data_dir),
                      required=("Model Name", "Release Date", "USD per 1M Tokens")
                      + LLM_BENCHMARKS,
                      label_col="Model Name", date_col="Release Date",
                      numeric=("USD per 1M Tokens",) + LLM_BENCHMARKS)
        for rel in LLM_PRICES
    ]
    return LoadedTable(pd.concat([p.frame for p in parts], ignore_index=True),
                       [d for p in parts for d in p.dropped],
                       [f for p in parts for f in p.files], sum(p.n_input for p in parts))


def load_capabilities_index(data_dir: str | os.PathLike | None = None, *,
                            snapshot: str = "2026-01") -> LoadedTable:
    """Epoch Capabilities Index (ECI) per model version (Epoch AI, CC-BY 4.0).

    Args:
        snapshot: "2026-01" (benchmarking hub) or "2025-11" (benchmark-stitching website copy).

    Columns: ``Model version``, ``ECI Score`` (float, ECI points), ``Training compute (FLOP)``
    (float), ``date``/``year`` from ``Release date``.
    """
    if snapshot not in ("2026-01", "2025-11"):
        raise DataError(f"capabilities index: unknown snapshot {snapshot!r} (2026-01 or 2025-11)")
    rel = ECI_2026 if snapshot == "2026-01" else ECI_2025
    return _load_checked(
        data_file(rel, data_dir),
        required=("Model version", "ECI Score", "Release date", "Organization",
                  "Training compute (FLOP)", "Model name"),
        label_col="Model version", date_col="Release date",
        numeric=("ECI Score", "Training compute (FLOP)"))


def load_chinchilla_points(data_dir: str | os.PathLike | None = None) -> LoadedTable:
    """Chinchilla replication points (Besiroglu et al. 2024, digitised from Hoffmann et al.
    2022 Fig. 4; Epoch AI). Adds ``tokens`` = FLOP / (6 N). Rows with a non-positive or
    missing size, FLOP or loss are dropped (reported)."""
    t = _load_checked(data_file(CHINCHILLA, data_dir),
                      required=("Model Size", "Training FLOP", "loss"),
                      label_col="Model Size", date_col=None,
                      numeric=("Model Size", "Training FLOP", "loss"))
    f = t.frame
    bad = ~((f["Model Size"] > 0) & (f["Training FLOP"] > 0) & (f["loss"] > 0))
    for _, r in f[bad].iterrows():
        t.dropped.append(DroppedRow(int(r["row"]), str(r["Model Size"]),
                                    "Model Size, Training FLOP or loss missing or <= 0",
                                    r["file"]))
    f = f[~bad].copy()
    f["tokens"] = f["Training FLOP"] / (6.0 * f["Model Size"])
    t.frame = f.reset_index(drop=True)
    return t


def table_points(table: LoadedTable, *, value_col: str, label_col: str, unit: str,
                 value_name: str | None = None, extra_cols: Sequence[str] = (),
                 dedupe: bool = True) -> TrendPoints:
    """TrendPoints from a dated :class:`LoadedTable` (uses its ``date`` column; rows with a
    missing, non-numeric or non-positive value are dropped with a reason; load-time drops are
    carried over so that ``n_input`` still counts every row of the file)."""
    pts = points_from_frame(table.frame, label_col=label_col, date_col="date",
                            value_col=value_col, unit=unit, file=", ".join(table.files),
                            value_name=value_name, dropped=list(table.dropped),
                            extra_cols=extra_cols, dedupe=dedupe)
    return pts
