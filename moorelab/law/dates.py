"""Strict date parsing to decimal years.

Dates are parsed with one explicit format (default ISO ``%Y-%m-%d``); a value that does not
match raises :class:`moorelab.errors.DataError` naming the file, the row and the field, never a
silent ``NaT``. Decimal years follow the usual convention of trend papers (Epoch AI):
``year + (day_of_year - 1) / days_in_year``, so 2024-01-01 -> 2024.0 and 2024-07-02 -> 2024.5
(2024 is a leap year, 366 days).
"""

from __future__ import annotations

import datetime as _dt
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from moorelab.errors import DataError

ISO_DATE = "%Y-%m-%d"


def decimal_year(d: _dt.date | pd.Timestamp) -> float:
    """Convert a date to a decimal year (float, years).

    ``year + (day_of_year - 1) / days_in_year``; e.g. 2020-01-01 -> 2020.0,
    2021-07-02 -> 2021.4986 (181 / 365).
    """
    if isinstance(d, pd.Timestamp):
        d = d.date()
    start = _dt.date(d.year, 1, 1)
    days_in_year = (_dt.date(d.year + 1, 1, 1) - start).days
    return d.year + (d - start).days / days_in_year


def year_to_date(year: float) -> _dt.date:
    """Inverse of :func:`decimal_year` (rounded to the nearest day)."""
    y = int(np.floor(year))
    start = _dt.date(y, 1, 1)
    days_in_year = (_dt.date(y + 1, 1, 1) - start).days
    return start + _dt.timedelta(days=int(round((year - y) * days_in_year)))


def parse_date(value: object, *, fmt: str = ISO_DATE, file: str = "<input>", row: object = "?",
               field: str = "date") -> _dt.date:
    """Parse one date string strictly with ``fmt``.

    Raises:
        DataError: ``"<file> row <row>, field '<field>': cannot parse date '<value>' as <fmt>"``
        (also for empty / missing values).
    """
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        raise DataError(f"{file} row {row}, field '{field}': missing date")
    if isinstance(value, (_dt.date, pd.Timestamp)) and not isinstance(value, str):
        return value.date() if isinstance(value, (pd.Timestamp, _dt.datetime)) else value
    text = str(value).strip()
    try:
        return _dt.datetime.strptime(text, fmt).date()
    except ValueError:
        raise DataError(
            f"{file} row {row}, field '{field}': cannot parse date {text!r} as {fmt}"
        ) from None


def parse_dates(values: Iterable[object], *, fmt: str = ISO_DATE, file: str = "<input>",
                field: str = "date", rows: Sequence[object] | None = None) -> np.ndarray:
    """Parse many dates strictly; return decimal years (float64 array, shape (n,)).

    Args:
        values: date strings.
        fmt: strptime format every value must match exactly.
        file, field: used in the error message.
        rows: row labels for error messages (default 0..n-1). Loaders pass the 1-based line
            number of the CSV file (header = line 1), so ``row 5`` is line 5 of the file.

    Raises:
        DataError naming file, row and field for the first value that does not parse.
    """
    values = list(values)
    rows = list(rows) if rows is not None else list(range(len(values)))
    out = np.empty(len(values), dtype=np.float64)
    for i, (v, r) in enumerate(zip(values, rows)):
        out[i] = decimal_year(parse_date(v, fmt=fmt, file=file, row=r, field=field))
    return out
