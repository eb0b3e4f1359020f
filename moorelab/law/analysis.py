"""Common shape of a ``moorelab trend <name>`` result: fit, row accounting, published figures,
a rich terminal table, one JSON object, and a plot.

Analyses (``compute``, ``hardware``, ``months``, ``forecast`` here; ``prices``, ``chinchilla``,
``efficiency`` by their own modules) build a :class:`TrendResult` and hand it to
:func:`emit` which prints the table (or, with ``--json``, exactly one JSON object on stdout)
and writes the plot.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moorelab.law.data import EPOCH_CREDIT, DroppedRow, TrendPoints, reason_key
from moorelab.law.fit import GrowthFit


@dataclass
class Published:
    """A published figure and our reproduction of it.

    Attributes:
        figure: what is compared, e.g. "training compute growth".
        published: value as published; published_ci: (lo, hi) or None; unit: e.g. "x/year".
        ours: our value; ours_ci: our interval at the same level (or None).
        source: citation (authors, venue/date, URL).
        tolerance: how agreement is judged, e.g. "ours within the published 90% CI".
        agrees: the verdict (None when no verdict applies, e.g. a stated sanity band).
        note: why the numbers may differ (data snapshot, selection).
    """

    figure: str
    published: float
    published_ci: tuple[float, float] | None
    unit: str
    ours: float
    ours_ci: tuple[float, float] | None
    source: str
    tolerance: str
    agrees: bool | None
    note: str = ""

    def to_dict(self) -> dict:
        return {"figure": self.figure, "unit": self.unit,
                "published": {"value": self.published,
                              "ci": list(self.published_ci) if self.published_ci else None},
                "ours": {"value": _f(self.ours),
                         "ci": [_f(v) for v in self.ours_ci] if self.ours_ci else None},
                "source": self.source, "tolerance": self.tolerance, "agrees": self.agrees,
                "note": self.note}


def within(value: float, ci: tuple[float, float]) -> bool:
    """``ci[0] <= value <= ci[1]``."""
    return bool(ci[0] <= value <= ci[1])


@dataclass
class Variant:
    """A secondary fit shown beside the main one (another selection or window)."""

    name: str
    fit: GrowthFit
    description: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "fit": self.fit.to_dict()}


@dataclass
class TrendResult:
    """Everything ``moorelab trend <name>`` reports.

    Attributes:
        name, title: analysis name and one-line title.
        fit: the main fit (None for analyses without one).
        points: the points used by the main fit, with every dropped row and its reason.
        background: all candidate points before the selection (grey in the plot), optional.
        metric, unit: what is on the y axis and its unit.
        published: published figures and our reproduction.
        variants: secondary fits.
        figures: other named figures, {name: {"value":..., "unit":..., ...}}.
        notes: free-text lines (selection rules, caveats).
        credit: attribution line (Epoch AI, CC-BY 4.0, for Epoch data).
        selection: options that defined the selection (window, frontier rule...).
    """

    name: str
    title: str
    fit: GrowthFit | None = None
    points: TrendPoints | None = None
    background: TrendPoints | None = None
    metric: str = ""
    unit: str = ""
    published: list[Published] = field(default_factory=list)
    variants: list[Variant] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    credit: str = EPOCH_CREDIT
    selection: dict[str, Any] = field(default_factory=dict)
    plot_path: str | None = None
    marks: list[dict] = field(default_factory=list)  # plot-only: threshold lines / date spans
    plotter: Any = None  # optional custom plot function (result, path) -> str

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"analysis": self.name, "title": self.title,
                               "metric": self.metric, "unit": self.unit,
                               "credit": self.credit, "selection": self.selection}
        if self.points is not None:
            p = self.points
            out["data"] = {
                "files": p.source, "n_input": p.n_input, "n_used": p.n,
                "n_dropped": len(p.dropped), "dropped_by_reason": p.dropped_summary(),
                "used": [{"label": str(lab), "date": str(d), "value": float(v), "row": int(r)}
                         for lab, d, v, r in zip(p.label, p.date, p.value, p.row)],
                "dropped": [d.to_dict() for d in p.dropped]}
        out["fit"] = self.fit.to_dict() if self.fit is not None else None
        out["figures"] = _clean(self.figures)
        out["published"] = [x.to_dict() for x in self.published]
        out["variants"] = [v.to_dict() for v in self.variants]
        out["notes"] = list(self.notes)
        out["plot"] = self.plot_path
        return out


def _f(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _clean(obj):
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _f(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# --------------------------------------------------------------------------- rendering
def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "inf"
    return f"{v:.{digits}g}"


def _ci(pair) -> str:
    return "-" if pair is None else f"{_fmt(pair[0])}–{_fmt(pair[1])}"


def fit_rows(fit: GrowthFit) -> list[tuple[str, str, str, str]]:
    """(figure, value, OLS CI, bootstrap CI) rows for a fit."""
    fu = "x/yr" if fit.direction == "growth" else "x/yr decrease"
    kind = fit.time_kind
    return [
        (f"factor per year ({fu})", _fmt(fit.factor_per_year), _ci(fit.factor_ci_ols),
         _ci(fit.factor_ci_boot)),
        (f"{kind} time (months)", _fmt(fit.doubling_time_months),
         _ci(None if fit.doubling_time_ci_ols is None else
             tuple(12 * v for v in fit.doubling_time_ci_ols)),
         _ci(None if fit.doubling_time_ci_boot is None else
             tuple(12 * v for v in fit.doubling_time_ci_boot))),
        (f"{kind} time (years)", _fmt(fit.doubling_time_years), _ci(fit.doubling_time_ci_ols),
         _ci(fit.doubling_time_ci_boot)),
        ("slope (log10/yr)", _fmt(fit.slope_log10_per_year, 4), _ci(fit.slope_ci_ols),
         _ci(fit.slope_ci_boot)),
        ("R² (log scale)", _fmt(fit.r_squared), "", ""),
        ("points", str(fit.n), "", f"{fit.n_boot} resamples, {fit.n_boot_degenerate} degenerate "
                                   "skipped"),
    ]


def render(result: TrendResult, console=None) -> None:
    """Print the result as rich tables (fit, published comparison, variants, drops, credit)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console()
    con.print(f"[bold]{result.title}[/bold]")
    if result.fit is not None:
        lvl = f"{round(result.fit.ci_level * 100)}%"
        t = Table(title=f"{result.metric} ({result.unit})" if result.metric else None)
        for col in ("figure", "value", f"{lvl} CI (OLS, t)", f"{lvl} CI (bootstrap)"):
            t.add_column(col, overflow="fold")
        for row in fit_rows(result.fit):
            t.add_row(*row)
        con.print(t)
    if result.figures:
        t = Table(title="figures")
        for col in ("figure", "value", "interval", "unit"):
            t.add_column(col, overflow="fold")
        for k, v in result.figures.items():
            if isinstance(v, dict):
                iv = v.get("ci") or v.get("interval")
                val = v.get("value")
                if isinstance(val, str):
                    t.add_row(k, val, "", str(v.get("unit", "")))
                else:
                    t.add_row(k, _fmt(val), _ci(iv) if iv else "", str(v.get("unit", "")))
            else:
                t.add_row(k, str(v), "", "")
        con.print(t)
    if result.published:
        t = Table(title="published vs reproduced")
        for col in ("figure", "published", "ours", "agrees", "source"):
            t.add_column(col, overflow="fold")
        for p in result.published:
            pub = _fmt(p.published) + (f" ({_ci(p.published_ci)})" if p.published_ci else "")
            ours = _fmt(p.ours) + (f" ({_ci(p.ours_ci)})" if p.ours_ci else "")
            ok = {True: "yes", False: "no", None: "n/a"}[p.agrees]
            t.add_row(f"{p.figure} [{p.unit}]", pub, ours, ok, p.source)
        con.print(t)
        for p in result.published:
            if p.note:
                con.print(f"  note ({p.figure}): {p.note}")
    if result.variants:
        t = Table(title="other selections")
        for col in ("selection", "n", "factor/yr", "CI (OLS)", "time (yr)", "CI (OLS)"):
            t.add_column(col, overflow="fold")
        for v in result.variants:
            f = v.fit
            t.add_row(v.name, str(f.n), _fmt(f.factor_per_year), _ci(f.factor_ci_ols),
                      _fmt(f.doubling_time_years), _ci(f.doubling_time_ci_ols))
        con.print(t)
    if result.points is not None:
        p = result.points
        con.print(f"rows: {p.n_input} read, {p.n} used, {len(p.dropped)} dropped")
        print_dropped(con, p.dropped)
    for n in result.notes:
        con.print(f"- {n}")
    if result.plot_path:
        con.print(f"plot: {result.plot_path}")
    if result.credit:
        con.print(f"[dim]{result.credit}[/dim]")


#: up to this many dropped rows are listed one per line; more are grouped by reason, each group
#: with its count and first rows (--json lists every one)
LIST_DROPPED_ROWS = 20


def print_dropped(con, dropped: list[DroppedRow]) -> None:
    """Name the dropped rows on the terminal: each one (file, row, label, reason) when there
    are at most :data:`LIST_DROPPED_ROWS`, else a table by reason with each reason's first rows."""
    from rich.table import Table

    if not dropped:
        return
    several_files = len({d.file for d in dropped}) > 1

    def where(d: DroppedRow) -> str:
        return f"{Path(d.file).name} row {d.row}" if several_files else f"row {d.row}"

    if len(dropped) <= LIST_DROPPED_ROWS:
        for d in dropped:
            con.print(f"  dropped {where(d)} ({d.label}): {d.reason}", markup=False, highlight=False,
                      soft_wrap=True)
        return
    groups: dict[str, list[DroppedRow]] = {}
    for d in dropped:
        groups.setdefault(reason_key(d.reason), []).append(d)
    t = Table(title="dropped rows by reason (every row and its reason: --json)")
    t.add_column("reason", overflow="fold")
    t.add_column("rows", justify="right")
    t.add_column("first rows", overflow="fold")
    for reason, ds in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        first = ", ".join(where(d) if several_files else str(d.row) for d in ds[:4])
        t.add_row(reason, str(len(ds)), first + (f" and {len(ds) - 4} more" if len(ds) > 4 else ""))
    con.print(t)


def _tex(text: str) -> str:
    """Escape '$' so that matplotlib does not read "FLOP/s per $" as mathtext."""
    return text.replace("$", r"\$")


def plot_trend(result: TrendResult, path: str | Path) -> str:
    """Scatter (log y) of the points used, candidates not selected in grey, the fit line with
    its OLS band; credit in the corner. Returns the path written (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    if result.background is not None and result.background.n:
        b = result.background
        ax.scatter(b.year, b.value, s=8, color="0.8", label="not selected")
    if result.points is not None and result.points.n:
        p = result.points
        ax.scatter(p.year, p.value, s=14, color="C0", label=f"used (n={p.n})")
    f = result.fit
    if f is not None:
        xs = np.linspace(f.x_range[0], f.x_range[1], 200)
        yhat = f.predict_log10(xs)
        from scipy import stats

        t = stats.t.ppf(0.5 + f.ci_level / 2, f.n - 2)
        half = t * f.resid_sd * np.sqrt(1 / f.n + (xs - f.x_mean) ** 2 / f.sxx)
        ax.plot(xs, 10 ** yhat, color="C3",
                label=_tex(f"{f.factor_per_year:.3g}x/yr, {f.time_kind} "
                           f"{f.doubling_time_months:.3g} months"))
        ax.fill_between(xs, 10 ** (yhat - half), 10 ** (yhat + half), color="C3", alpha=0.15,
                        label=f"{round(f.ci_level * 100)}% confidence band of the fitted line")
    for item in result.marks:
        if True:
            ax.axhline(item["y"], color="k", ls="--", lw=0.8)
            ax.axvspan(item["x_lo"], item["x_hi"], color="C2", alpha=0.15,
                       label=item.get("label"))
    ax.set_yscale("log")
    ax.set_xlabel("date (year)")
    ax.set_ylabel(_tex(f"{result.metric} ({result.unit})" if result.metric else result.unit))
    ax.set_title(_tex(result.title), fontsize=10)
    ax.legend(fontsize=8, loc="best")
    if result.credit:
        fig.text(0.99, 0.01, _tex(result.credit), ha="right", va="bottom", fontsize=7,
                 color="0.4")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def emit(result: TrendResult, *, as_json: bool, plot: Path | None) -> None:
    """Write the plot (unless ``plot`` is None), then print the table or one JSON object."""
    if plot is not None:
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        result.plot_path = (result.plotter or plot_trend)(result, plot)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), allow_nan=False) + "\n")
    else:
        render(result)
