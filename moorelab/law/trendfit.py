"""``moorelab trend fit FILE``: the general door -- any dated values in, a growth fit out.

Input: a CSV or JSON lines file (``.jsonl``/``.ndjson``), one row per dated value: a date
column (one strptime format for the whole column, default ISO YYYY-MM-DD), a value column
(> 0; "1e23", "$5,412.00" accepted) and optionally a label column.

Pipeline, every input row used or dropped with a reason (never silently):

1. dates (:func:`moorelab.law.dates.parse_date_column`): empty -> dropped "date missing";
   text that is no date ("TBD") -> dropped "date unparseable"; a date written in another
   format than the rest of the column -> DataError naming the file, the column and an example
   row of each format (a mixed column is a data problem to fix, not rows to lose);
2. values (:func:`moorelab.law.data.points_from_frame`): missing / not a number / <= 0
   (a log-scale fit needs > 0) / exact duplicate -> dropped;
3. window (:func:`moorelab.law.frontier.window`): ``since <= date < until``;
4. frontier (:mod:`moorelab.law.frontier`): none, running-best (strict running record; the
   running minimum when lower is better) or top-K at its date;
5. fit (:func:`moorelab.law.fit.fit_growth`): OLS of log10(value) on decimal years, OLS t and
   pairs-bootstrap intervals. Higher is better: factor of growth per year and doubling time;
   ``lower_is_better``: factor of decline per year ("x cheaper per year") and halving time.

Fewer than 3 usable rows, or all on one date, is a DataError (from the fit).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moorelab.errors import DataError
from moorelab.law.analysis import TrendResult, _tex
from moorelab.law.data import DroppedRow, TrendPoints, points_from_frame, read_jsonl, read_table
from moorelab.law.dates import ISO_DATE, parse_date_column
from moorelab.law.fit import fit_growth
from moorelab.law.frontier import running_record_frontier, top_k_frontier, window

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".txt")

#: kinds of dropped rows, in pipeline order (keys of ``dropped_by_kind``)
DROP_KINDS = ("date missing", "date unparseable", "value missing or not a number",
              "value <= 0 (or infinite)", "duplicate row", "outside --since/--until",
              "not on the frontier")


def parse_frontier(spec: str) -> tuple[str, int | None]:
    """``"none"`` -> ("none", None); ``"running-best"`` -> ("running-best", None);
    ``"top-K"`` (K >= 1, e.g. "top-3") -> ("top", K).

    Raises:
        DataError naming the accepted forms.
    """
    s = spec.strip().lower()
    if s in ("none", "running-best"):
        return s, None
    m = re.fullmatch(r"top-?(\d+)", s)
    if m and int(m.group(1)) >= 1:
        return "top", int(m.group(1))
    raise DataError(f"--frontier must be none, running-best or top-K (K >= 1, e.g. top-3), "
                    f"not {spec!r}")


def read_dated_file(path: str | os.PathLike, *, required: tuple[str, ...] = ()):
    """Read a CSV (cells kept as text) or JSON lines file by its suffix; the frame's index is
    the row number used in messages (CSV: spreadsheet row, header = 1; JSONL: line)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return read_jsonl(p, required=required)
    if suffix in CSV_SUFFIXES:
        return read_table(p, required=required, as_text=True)
    raise DataError(f"{p}: unknown file type {suffix or '(no suffix)'!r}; give a CSV "
                    f"({', '.join(CSV_SUFFIXES)}) or JSON lines ({', '.join(JSONL_SUFFIXES)})")


def load_dated_values(path: str | os.PathLike, *, date_col: str = "date",
                      value_col: str = "value", label_col: str | None = None,
                      date_format: str = ISO_DATE) -> tuple[TrendPoints, dict[str, int]]:
    """Dated positive values from a CSV or JSONL file, every row used or dropped with a reason.

    Args:
        path: ``.csv``/``.txt`` (comma-separated, header row) or ``.jsonl``/``.ndjson``.
        date_col, value_col: column names; label_col: optional names of the rows (default
            "row N").
        date_format: strptime format of the whole date column.

    Returns:
        (points, dropped_by_kind): the points (``row`` = CSV spreadsheet row or JSONL line) and
        counts of the rows dropped so far, by kind (see :data:`DROP_KINDS`).

    Raises:
        DataError: no such file, empty file, unknown suffix, a missing column (names it and
        lists the columns present), mixed date formats (names the column and an example row of
        each format), a column in another date format than ``date_format``.
    """
    req = (date_col, value_col) + ((label_col,) if label_col else ())
    df = read_dated_file(path, required=req)
    file = str(path)
    rows = [int(r) for r in df.index]
    dates, date_drops = parse_date_column(df[date_col].tolist(), rows, fmt=date_format,
                                          file=file, field=date_col)

    def label(r):
        if label_col is None:
            return f"row {r}"
        v = df.at[r, label_col]
        return f"<row {r}>" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)

    if label_col is None:
        df = df.assign(_label=[f"row {r}" for r in rows])
        label_col = "_label"
    dropped = [DroppedRow(r, label(r), date_drops[r], file) for r in rows if r in date_drops]
    kinds = {k: 0 for k in DROP_KINDS}
    for d in dropped:
        kinds["date missing" if d.reason.endswith("missing") else "date unparseable"] += 1
    ok = np.array([d is not None for d in dates], bool)
    good = df.loc[ok].copy()
    good["_iso"] = [d.isoformat() for d in dates if d is not None]
    pts = points_from_frame(good, label_col=label_col, date_col="_iso", value_col=value_col,
                            unit=value_col, file=file, value_name=value_col, dropped=dropped)
    for d in pts.dropped[len(dropped):]:
        if d.reason.startswith("duplicate of row"):
            kinds["duplicate row"] += 1
        elif d.reason.startswith(f"{value_col} <= 0"):
            kinds["value <= 0 (or infinite)"] += 1
        else:
            kinds["value missing or not a number"] += 1
    return pts, kinds


@dataclass
class FitResult(TrendResult):
    """A :class:`TrendResult` that also counts its dropped rows by kind (:data:`DROP_KINDS`);
    JSON: ``data.dropped_by_kind``."""

    dropped_by_kind: dict[str, int] = field(default_factory=dict)
    candidates: TrendPoints | None = None  # points in the window, before the frontier rule

    def to_dict(self) -> dict:
        out = super().to_dict()
        if "data" in out:
            out["data"]["dropped_by_kind"] = dict(self.dropped_by_kind)
        return out


def run_fit(path: str | os.PathLike, *, date_col: str = "date", value_col: str = "value",
            label_col: str | None = None, date_format: str = ISO_DATE,
            lower_is_better: bool = False, frontier: str = "none", since: str | None = None,
            until: str | None = None, ci: float = 0.90, n_boot: int = 2000, seed: int = 0,
            unit: str | None = None) -> FitResult:
    """The ``fit`` analysis: growth (or decline) rate of any dated series (module doc).

    Args:
        path, date_col, value_col, label_col, date_format: see :func:`load_dated_values`.
        lower_is_better: the metric improves downwards (prices, loss): the fit reports the
            factor of decline per year and a halving time; running-best is the running minimum
            and top-K keeps the K lowest.
        frontier: "none", "running-best" or "top-K" (see :func:`parse_frontier`).
        since, until: window ``since <= date < until`` (ISO YYYY-MM-DD; either optional).
        ci: interval level (0.90 = 90%); n_boot: bootstrap resamples (0 = none); seed.
        unit: the value's unit for labels (default: not stated).

    Returns:
        :class:`FitResult`: fit (factor per year, doubling or halving time in years and months,
        OLS and bootstrap intervals), the points used, every dropped row with its reason,
        counts by kind, and the window's points before the frontier rule (``candidates``).

    Raises:
        DataError: see :func:`load_dated_values`; a bad --frontier or window bound; fewer than
        3 usable rows or all on one date (names the count and what was dropped).
    """
    kind, k = parse_frontier(frontier)
    bounds = {}
    for opt, v in (("--since", since), ("--until", until)):
        if v is not None:
            try:
                bounds[opt] = _dt.datetime.strptime(str(v).strip(), ISO_DATE).date()
            except ValueError:
                raise DataError(f"option {opt}: cannot parse date {v!r} as YYYY-MM-DD") from None
    pts, kinds = load_dated_values(path, date_col=date_col, value_col=value_col,
                                   label_col=label_col, date_format=date_format)
    n0 = len(pts.dropped)
    if since is not None or until is not None:
        pts = window(pts, bounds.get("--since"), bounds.get("--until"))
    kinds["outside --since/--until"] = len(pts.dropped) - n0
    candidates = pts
    n1 = len(pts.dropped)
    higher = not lower_is_better
    if kind == "running-best":
        pts = running_record_frontier(pts, higher_is_better=higher)
    elif kind == "top":
        pts = top_k_frontier(pts, k, higher_is_better=higher)
    kinds["not on the frontier"] = len(pts.dropped) - n1
    pts.check_accounting()
    if pts.n < 3:
        lost = ", ".join(f"{v} {name}" for name, v in kinds.items() if v) or "none dropped"
        raise DataError(f"{path}: {pts.n} usable row(s) of {pts.n_input} ({lost}); a trend "
                        "fit needs at least 3")
    fit = fit_growth(pts.year, pts.value, ci=ci, n_boot=n_boot, seed=seed,
                     labels=list(pts.label),
                     direction="decline" if lower_is_better else "growth")
    fr_name = {"none": "all rows", "running-best": "running-best frontier (running "
               + ("maximum" if higher else "minimum") + ")",
               "top": f"top-{k} at release"}[kind]
    window_txt = "" if since is None and until is None else \
        f", {since or 'start'} <= date < {until or 'end'}"
    res = FitResult(
        name="fit", title=f"{value_col} over {date_col} ({Path(path).name}): {fr_name}"
                          f"{window_txt}, {'lower' if lower_is_better else 'higher'} is better",
        fit=fit, points=pts, metric=value_col, unit=unit or "unit as in the file",
        credit="", dropped_by_kind=kinds, candidates=candidates,
        background=candidates if candidates.n != pts.n else None,
        selection={"file": str(path), "date_col": date_col, "value_col": value_col,
                   "label_col": label_col, "date_format": date_format,
                   "lower_is_better": lower_is_better, "frontier": frontier.strip().lower(),
                   "since": since, "until": until, "ci": ci, "n_boot": n_boot, "seed": seed})
    dropped_txt = ", ".join(f"{v} {name}" for name, v in kinds.items() if v)
    res.notes.append(f"dropped by kind: {dropped_txt or 'none'}")
    if fit.time_kind == "halving" and not lower_is_better:
        res.notes.append(f"{value_col} declines although higher is better: the figure is a "
                         "halving time (factor per year < 1)")
    if fit.time_kind == "doubling" and lower_is_better:
        res.notes.append(f"{value_col} rises although lower is better: the figure is a "
                         "doubling time (factor of decline per year < 1)")
    res.plotter = plot_fit
    return res


def plot_fit(result: FitResult, path) -> str:
    """Log-scale plot: rows not on the frontier in grey, the points fitted highlighted, the
    fitted line and its OLS confidence band; y axis named after the value column. Returns the
    PNG path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    f = result.fit
    p = result.points
    fr = result.selection.get("frontier", "none")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    if result.background is not None:
        b = result.background
        keep = ~np.isin(b.row, p.row)
        ax.scatter(b.year[keep], b.value[keep], s=10, color="0.75",
                   label=f"not on the frontier (n={int(keep.sum())})")
    ax.scatter(p.year, p.value, s=22 if fr != "none" else 14, color="C0",
               edgecolors="k" if fr != "none" else "none", linewidths=0.5,
               label=(f"frontier, {fr} (n={p.n})" if fr != "none" else f"rows used (n={p.n})"))
    xs = np.linspace(f.x_range[0], f.x_range[1], 200)
    yhat = f.predict_log10(xs)
    t = stats.t.ppf(0.5 + f.ci_level / 2, f.n - 2)
    half = t * f.resid_sd * np.sqrt(1 / f.n + (xs - f.x_mean) ** 2 / f.sxx)
    fu = "x/yr" if f.direction == "growth" else "x/yr decline"
    ax.plot(xs, 10 ** yhat, color="C3",
            label=_tex(f"fit: {f.factor_per_year:.3g} {fu}, {f.time_kind} "
                       f"{f.doubling_time_months:.3g} months"))
    ax.fill_between(xs, 10 ** (yhat - half), 10 ** (yhat + half), color="C3", alpha=0.15,
                    label=f"{round(f.ci_level * 100)}% confidence band of the line (OLS)")
    ax.set_yscale("log")
    ax.set_xlabel(f"{result.selection.get('date_col', 'date')} (decimal year)")
    ax.set_ylabel(_tex(f"{result.metric} ({result.unit}, log scale)"))
    import textwrap

    ax.set_title(_tex("\n".join(textwrap.wrap(result.title, 90))), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
