"""Strict date parsing to decimal years.

Dates are parsed with one explicit format (default ISO ``%Y-%m-%d``); a value that does not
match raises :class:`moorelab.errors.DataError` naming the file, the row and the field, never a
silent ``NaT``. Decimal years follow the usual convention of trend papers (Epoch AI):
``year + (day_of_year - 1) / days_in_year``, so 2024-01-01 -> 2024.0 and 2024-07-02 -> 2024.5
(2024 is a leap year, 366 days).
"""

from __future__ import annotations

import datetime as _dt
import re
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


#: Date layouts recognised when a value does not match the format asked for: used only to tell
#: a value written in ANOTHER date format (an error: the column mixes formats, or the format
#: option is wrong) from text that is no date at all (a reported drop). Never used to parse.
OTHER_FORMATS = (
    "%Y-%m-%d", "%Y/%m/%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y", "%m-%d-%Y",
    "%d/%m/%y", "%m/%d/%y", "%Y%m%d", "%Y-%m", "%Y/%m", "%Y",
    "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M",
    "%d %b %Y", "%d %B %Y", "%b %d, %Y", "%B %d, %Y", "%b %d %Y", "%B %d %Y", "%b %Y", "%B %Y",
)


def formats_matching(text: str, formats: Sequence[str] = OTHER_FORMATS) -> tuple[str, ...]:
    """The strptime formats of ``formats`` that parse ``text`` exactly (e.g. "05/01/2023" ->
    ("%d/%m/%Y", "%m/%d/%Y")); empty if none does, and empty for text without a 4-digit year
    or a dd/mm/yy shape (strptime's ``%Y`` also takes "5", which is no date)."""
    if not (re.search(r"\d{4}", text) or re.fullmatch(r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2}", text)):
        return ()
    out = []
    for f in formats:
        try:
            _dt.datetime.strptime(text, f)
        except ValueError:
            continue
        out.append(f)
    return tuple(out)


def parse_date_column(values: Sequence[object], rows: Sequence[object], *, fmt: str = ISO_DATE,
                      file: str = "<input>", field: str = "date"
                      ) -> tuple[list[_dt.date | None], dict[object, str]]:
    """Parse a whole date column strictly with ``fmt``, telling format errors from bad cells.

    Every value is one of: empty (a drop, "<field> missing"); a date in ``fmt`` (parsed); a
    date written in another known layout (:data:`OTHER_FORMATS`); or text that is no date at
    all, e.g. "TBD" or "2023-13-45" (a drop, "<field> unparseable as <fmt> ('TBD')").

    Args:
        values: the column's cells (str or anything ``str()`` turns into the written date).
        rows: the row number of each cell (spreadsheet row or line), used in messages.
        fmt: the strptime format every date must match (default ISO YYYY-MM-DD).
        file, field: named in messages.

    Returns:
        (dates, drops): ``dates[i]`` the parsed date or None; ``drops`` row -> reason for
        every None.

    Raises:
        DataError (one line naming the file and the column):
            * the column mixes formats: some values match ``fmt`` and others are dates in
              another layout -- names an example row of each format (values of one shape,
              e.g. "07/05/2025" and "20/05/2025", are one format, read as the layouts they
              all fit: here %d/%m/%Y);
            * no value matches ``fmt`` but values are dates in another layout -- names an
              example row and the layouts it matches, so the user can pass that format.
    """
    dates: list[_dt.date | None] = []
    drops: dict[object, str] = {}
    first_ok: tuple[object, str] | None = None
    # values in other layouts, grouped by shape (digits -> 9, letters -> a): "20/05/2025" and
    # "07/05/2025" are one format; shape -> [first row, its text, count, layouts in common,
    # layouts of any]
    others: dict[str, list] = {}
    for v, r in zip(values, rows):
        if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
            dates.append(None)
            drops[r] = f"{field} missing"
            continue
        text = str(v).strip()
        try:
            d = _dt.datetime.strptime(text, fmt).date()
        except ValueError:
            d = None
        if d is not None:
            dates.append(d)
            if first_ok is None:
                first_ok = (r, text)
            continue
        dates.append(None)
        layouts = tuple(f for f in formats_matching(text) if f != fmt)
        if layouts:
            shape = re.sub(r"[^\W\d_]", "a", re.sub(r"\d", "9", text))
            g = others.setdefault(shape, [r, text, 0, layouts, ()])
            g[2] += 1
            g[3] = tuple(f for f in g[3] if f in layouts)
            g[4] = g[4] + tuple(f for f in layouts if f not in g[4])
        else:
            drops[r] = f"{field} unparseable as {fmt} ({text!r})"
    if others:
        n_other = sum(g[2] for g in others.values())
        examples = "; ".join(f"row {r0} {t0!r} (reads as {' or '.join(common or anyof)}; "
                             f"{k} row(s) like it)"
                             for r0, t0, k, common, anyof in others.values())
        if first_ok is not None:
            raise DataError(
                f"{file}, column '{field}': mixed date formats: row {first_ok[0]} "
                f"{first_ok[1]!r} is {fmt}, but {n_other} row(s) are dates in another format: "
                f"{examples}; write every date in one format (--date-format sets which)")
        raise DataError(
            f"{file}, column '{field}': no date matches {fmt}; {examples}; pass that format "
            f"with --date-format")
    return dates, drops
