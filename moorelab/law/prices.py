"""How fast does the price of a fixed LLM capability fall?

Method: Epoch AI, "LLM inference prices have fallen rapidly but unequally across tasks"
(Cottier, Snodin, Owen, Adamczewski, data insight, 12 Mar 2025; code
github.com/epoch-research/llm-benchmark-efficiency, data CC-BY 4.0, credit "Epoch AI").
For every benchmark b and every *threshold model* T:

1. Pool: the Artificial Analysis table and Epoch AI's own price table, concatenated; rows
   without a price are dropped; ``GPT-3 175B (davinci)`` is renamed ``GPT-3``; reasoning
   models (DeepSeek-R1, o1, o1-mini, o1-preview, o3-mini) are dropped.
2. Threshold models: walking release dates in order, the best-scoring model of a date is a
   threshold model when its score beats every model released on an earlier date ("was ever
   top-1"). Models released the same day are judged together (this is what makes
   GPT-4-0613, not GPT-3.5-Turbo-2023-06, the MATH-5 threshold of 2023-06-13, as in Epoch's
   published results).
3. Window: score in ``[lb, min(lb + 100, 100))`` with ``lb`` = T's score (Chatbot Arena Elo:
   ``[lb, inf)``).
4. Running cheapest: in release order, from T's release date on, a model in the window is a
   record when it is strictly cheaper than every earlier record; a record is dropped when the
   next record has the same release date (the cheaper one of that day stays).
5. OLS of log10(price) on the date in units of 365 days (``ordinal day / 365``) via
   :func:`moorelab.law.fit.fit_growth` (``direction="decline"``): the price falls by
   ``10**(-365 * slope_per_day)`` per year, 90% CI from the OLS slope (Student t, n-2 dof).
   Fits with fewer than 4 records are reported as skipped.

With the published inputs this reproduces all 21 rows of Epoch's
``lowest_price_models_results.csv`` (e.g. GPQA Diamond at GPT-4-0314 level: 42.0x/year,
90% CI 4.4-401, n = 6; range over thresholds 9.24x-851x/year).
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from moorelab.errors import DataError
from moorelab.law.data import EPOCH_CREDIT, LLM_BENCHMARKS, DroppedRow, load_llm_prices
from moorelab.law.fit import GrowthFit, fit_growth

PRICE_COL = "USD per 1M Tokens"
REASONING_MODELS = ("DeepSeek-R1", "o1", "o1-mini", "o1-preview", "o3-mini")
RENAMES = {"GPT-3 175B (davinci)": "GPT-3"}
ARENA = "LMSys Chatbot Arena ELO"
MIN_POINTS = 4
CREDIT = (EPOCH_CREDIT + "; method and data: Epoch AI, 'LLM inference prices have fallen "
          "rapidly but unequally across tasks' (Mar 2025); AA rows: Artificial Analysis")
PUBLISHED = {
    "source": "Epoch AI data insight, 12 Mar 2025 (llm-benchmark-efficiency results csv)",
    "range_x_per_year": [9.24, 851.16],
    "gpqa_gpt4_x_per_year": 42.02, "gpqa_gpt4_ci90": [4.40, 401.4], "gpqa_gpt4_n": 6,
    "mmlu_gpt3_x_per_year": 11.77, "mmlu_gpt3_ci90": [8.29, 16.72], "mmlu_gpt3_n": 9,
    "n_fits": 21,
}


@dataclass
class PricePoint:
    """One running-cheapest record: model, release date (ISO), price ($/1M tokens), score."""

    model: str
    date: str
    price: float
    score: float

    def to_dict(self) -> dict:
        return {"model": self.model, "date": self.date,
                "price": {"value": self.price, "unit": "$/1M tokens"},
                "score": self.score}


@dataclass
class PriceFit:
    """Price decline for one (benchmark, threshold model).

    Attributes:
        benchmark, threshold_model: names as in the data.
        lower, upper: score window ``[lower, upper)`` (benchmark units: % or Arena Elo).
        points: the running-cheapest records used (>= 4).
        fit: OLS fit (x in units of 365 days, ``direction="decline"``); ``None`` if skipped.
        skipped: reason when fewer than 4 records (then ``fit`` is None).
    """

    benchmark: str
    threshold_model: str
    lower: float
    upper: float
    points: list[PricePoint]
    fit: GrowthFit | None = None
    skipped: str | None = None

    @property
    def factor_per_year(self) -> float:
        """Price reduction factor per year (x cheaper per year); NaN if skipped."""
        return self.fit.factor_per_year if self.fit else math.nan

    def to_dict(self) -> dict:
        d = {"benchmark": self.benchmark, "threshold_model": self.threshold_model,
             "score_window": {"value": [self.lower, _finite(self.upper)],
                              "unit": "Elo" if self.benchmark == ARENA else "% score",
                              "closed_open": True},
             "n": len(self.points), "points": [p.to_dict() for p in self.points]}
        if self.fit is None:
            d["skipped"] = self.skipped
            return d
        f = self.fit
        d.update({
            "start_date": self.points[0].date, "end_date": self.points[-1].date,
            "price_reduction_factor_per_year": {"value": f.factor_per_year,
                                                "unit": "x cheaper per year",
                                                "ci90_ols": list(f.factor_ci_ols)},
            "halving_time": {"value": f.doubling_time_months, "unit": "months"},
            "slope": {"value": f.slope_log10_per_year, "unit": "log10($/1M tokens) per 365 days",
                      "se": f.slope_se},
            "r_squared": {"value": f.r_squared, "unit": "1"},
        })
        return d


@dataclass
class PricesResult:
    """All fits plus row accounting. ``fits`` holds fitted rows only; ``skipped`` the
    (benchmark, threshold) pairs with fewer than 4 records."""

    fits: list[PriceFit]
    skipped: list[PriceFit]
    n_input: int
    n_used: int
    dropped: list[DroppedRow]
    files: list[str]
    ci: float = 0.90
    credit: str = CREDIT

    def factors(self) -> np.ndarray:
        """shape (n_fits,), x cheaper per year."""
        return np.array([f.factor_per_year for f in self.fits])

    def get(self, benchmark: str, threshold_model: str) -> PriceFit:
        """The fit for (benchmark, threshold_model); KeyError if absent or skipped."""
        for f in self.fits:
            if f.benchmark == benchmark and f.threshold_model == threshold_model:
                return f
        raise KeyError(f"no price fit for {benchmark!r} at {threshold_model!r}")

    def summary(self) -> dict:
        fac = self.factors()
        out = {"n_fits": len(self.fits), "n_skipped": len(self.skipped)}
        if fac.size:
            out.update({
                "min_factor_per_year": {"value": float(fac.min()), "unit": "x cheaper per year"},
                "median_factor_per_year": {"value": float(np.median(fac)),
                                           "unit": "x cheaper per year"},
                "max_factor_per_year": {"value": float(fac.max()), "unit": "x cheaper per year"},
            })
        try:
            g = self.get("GPQA Diamond", "GPT-4-0314")
            out["gpqa_diamond_gpt4_level"] = {
                "value": g.factor_per_year, "unit": "x cheaper per year",
                "ci90_ols": list(g.fit.factor_ci_ols), "n": len(g.points)}
        except KeyError:
            pass
        return out

    def to_dict(self) -> dict:
        return {
            "analysis": "prices",
            "what": "cheapest LLM price ($/1M tokens, blended) reaching a fixed benchmark score,"
                    " decline per year",
            "method": "Epoch AI (Mar 2025): running cheapest model above each top-1 threshold; "
                      "OLS log10(price) ~ days/365; 90% CI from OLS",
            "credit": self.credit,
            "summary": self.summary(),
            "published": PUBLISHED,
            "fits": [f.to_dict() for f in self.fits],
            "skipped": [f.to_dict() for f in self.skipped],
            "rows": {"n_input": self.n_input, "n_used": self.n_used,
                     "n_dropped": len(self.dropped),
                     "dropped": [d.to_dict() for d in self.dropped]},
            "files": self.files,
        }


def _finite(v: float):
    return v if math.isfinite(v) else None


def _ordinal_years(iso_dates: Sequence[str]) -> np.ndarray:
    """ISO dates -> proleptic ordinal day / 365 (float years; Epoch's x axis)."""
    return np.array([_dt.date.fromisoformat(d).toordinal() / 365.0 for d in iso_dates])


def prepare_price_table(frame: pd.DataFrame, dropped: list[DroppedRow]) -> pd.DataFrame:
    """Apply steps 1 of the method to a loaded table (see module docstring).

    Args:
        frame: rows of :func:`moorelab.law.data.load_llm_prices` (columns ``Model Name``,
            ``date``, ``USD per 1M Tokens``, benchmark scores, ``row``, ``file``).
        dropped: list that receives one :class:`DroppedRow` per removed row.

    Returns:
        The pool (same columns), in input order.

    Raises:
        DataError: a price <= 0 or infinite (names file, row and field).
    """
    keep = []
    for i, r in frame.iterrows():
        name = str(r["Model Name"])
        price = r[PRICE_COL]
        if pd.isna(price):
            dropped.append(DroppedRow(int(r["row"]), name, f"{PRICE_COL} missing", r["file"]))
            continue
        if not np.isfinite(price) or price <= 0:
            raise DataError(f"{r['file']} row {int(r['row'])}, field '{PRICE_COL}': "
                            f"price {price!r} must be > 0 (log scale)")
        if name in REASONING_MODELS:
            dropped.append(DroppedRow(int(r["row"]), name,
                                      "reasoning model (excluded as in Epoch's analysis)",
                                      r["file"]))
            continue
        keep.append(i)
    pool = frame.loc[keep].copy()
    pool["Model Name"] = pool["Model Name"].replace(RENAMES)
    return pool


def threshold_models(pool: pd.DataFrame, benchmark: str) -> list[int]:
    """Index labels of the threshold models for ``benchmark`` (step 2): per release date the
    best-scoring model (first in input order on ties), kept when strictly above every score
    released on an earlier date."""
    d = pool.dropna(subset=[benchmark])
    best = -math.inf
    out = []
    for _, g in d.groupby("date", sort=True):
        top = g[benchmark].max()
        if top > best:
            out.append(g[benchmark].idxmax())
            best = top
    return out


def running_cheapest(pool: pd.DataFrame, benchmark: str, threshold_idx: int
                     ) -> tuple[float, float, list[PricePoint]]:
    """Steps 3-4 for one threshold model: (lower, upper, records)."""
    d = pool.dropna(subset=[benchmark]).sort_values("date", kind="stable")
    t = pool.loc[threshold_idx]
    lb = float(t[benchmark])
    ub = math.inf if benchmark == ARENA else min(lb + 100.0, 100.0)
    w = d[(d[benchmark] >= lb) & (d[benchmark] < ub) & (d["date"] >= t["date"])]
    recs: list[PricePoint] = []
    cheapest = math.inf
    for _, r in w.iterrows():
        if r[PRICE_COL] < cheapest:
            cheapest = float(r[PRICE_COL])
            recs.append(PricePoint(str(r["Model Name"]), str(r["date"]), cheapest,
                                   float(r[benchmark])))
    recs = [p for j, p in enumerate(recs) if not (j + 1 < len(recs) and recs[j + 1].date == p.date)]
    return lb, ub, recs


def price_trends(frame: pd.DataFrame, *, dropped: list[DroppedRow] | None = None,
                 n_input: int | None = None, files: Sequence[str] = (),
                 benchmarks: Sequence[str] = LLM_BENCHMARKS, ci: float = 0.90,
                 min_points: int = MIN_POINTS) -> PricesResult:
    """Price decline at fixed capability for every benchmark and threshold model.

    Args:
        frame: table as returned by :func:`moorelab.law.data.load_llm_prices` (``.frame``).
        dropped: rows already dropped at load (kept in the accounting).
        n_input: rows read (default ``len(frame) + len(dropped)``).
        files: source files (for the report).
        benchmarks: score columns to analyse (% scores, or Arena Elo).
        ci: interval level (0.90 as published).
        min_points: minimum running-cheapest records for a fit (4 as published).

    Returns:
        :class:`PricesResult`; factors in "x cheaper per year" ($/1M tokens).

    Raises:
        DataError: missing benchmark column, a price <= 0, or no (benchmark, threshold)
            pair with ``min_points`` records at all (pairs with fewer are reported as
            skipped, as in Epoch's analysis).
    """
    dropped = list(dropped or [])
    n_in = n_input if n_input is not None else len(frame) + len(dropped)
    for b in benchmarks:
        if b not in frame.columns:
            raise DataError(f"{', '.join(files) or '<table>'}: missing column {b!r}")
    pool = prepare_price_table(frame, dropped)
    fits, skipped = [], []
    for b in benchmarks:
        for ti in threshold_models(pool, b):
            lb, ub, recs = running_cheapest(pool, b, ti)
            pf = PriceFit(b, str(pool.at[ti, "Model Name"]), lb, ub, recs)
            if len(recs) < min_points:
                pf.skipped = f"{len(recs)} running-cheapest record(s) < {min_points}"
                skipped.append(pf)
                continue
            pf.fit = fit_growth(_ordinal_years([p.date for p in recs]),
                                [p.price for p in recs], ci=ci, n_boot=0,
                                labels=[p.model for p in recs], direction="decline")
            fits.append(pf)
    if not fits:
        raise DataError(f"{', '.join(files) or '<table>'}: no benchmark/threshold pair has "
                        f"{min_points} or more running-cheapest records; nothing to fit")
    return PricesResult(fits, skipped, n_in, len(pool), dropped, list(files), ci)


def run_prices(data_dir: str | os.PathLike | None = None, *, ci: float = 0.90) -> PricesResult:
    """Load ``DIR/epoch-llm-benchmark-efficiency/*.csv`` and run :func:`price_trends`.

    Raises:
        DataError: missing file or column, unparseable date (file, row, field), price <= 0.
    """
    t = load_llm_prices(data_dir)
    return price_trends(t.frame, dropped=t.dropped, n_input=t.n_input, files=t.files, ci=ci)


# --------------------------------------------------------------------------- presentation
def prices_table(result: PricesResult):
    """A rich Table of every fit (x cheaper per year with the 90% CI)."""
    from rich.table import Table

    s = result.summary()
    title = "LLM price to reach a fixed benchmark score: decline per year"
    if "min_factor_per_year" in s:
        title += (f" (range {s['min_factor_per_year']['value']:.3g}x-"
                  f"{s['max_factor_per_year']['value']:.3g}x, median "
                  f"{s['median_factor_per_year']['value']:.3g}x)")
    tab = Table(title=title, caption=result.credit + f" | rows: {result.n_used} used, "
                f"{len(result.dropped)} dropped of {result.n_input}")
    pct = f"{int(result.ci * 100)}% CI"
    # narrow enough for 80 columns: cells wrap at their spaces, and fold rather than cut a word
    for c, j, w in (("benchmark: top-1 model [score window)", "left", None), ("n", "right", None),
                    ("first, last", "left", 10), ("x/yr", "right", None), (pct, "right", 13),
                    ("R²", "right", None)):
        tab.add_column(c, justify=j, overflow="fold", max_width=w)
    for f in result.fits:
        lo, hi = f.fit.factor_ci_ols
        win = f"[{f.lower:g}, {'inf' if not math.isfinite(f.upper) else f'{f.upper:g}'})"
        tab.add_row(f"{f.benchmark}: {f.threshold_model} {win}", str(len(f.points)),
                    f"{f.points[0].date} {f.points[-1].date}", f"{f.factor_per_year:.3g}",
                    f"{lo:.3g} – {hi:.3g}", f"{f.fit.r_squared:.2f}")
    return tab


def plot_prices(result: PricesResult, path: str | os.PathLike) -> Path:
    """Save a figure: per benchmark, running-cheapest prices ($/1M tokens, log) over time and
    the fitted declines. Returns the path written (PNG/SVG/PDF by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benches = list(dict.fromkeys(f.benchmark for f in result.fits))
    ncol = 3
    nrow = max(1, math.ceil(len(benches) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.8 * nrow), squeeze=False)
    for ax, b in zip(axes.ravel(), benches):
        for f in (f for f in result.fits if f.benchmark == b):
            x = np.array([np.datetime64(p.date) for p in f.points])
            y = np.array([p.price for p in f.points])
            (ln,) = ax.plot(x, y, "o", ms=4,
                            label=f"{f.threshold_model}: {f.factor_per_year:.3g}x/yr")
            xo = _ordinal_years([p.date for p in f.points])
            ax.plot(x, 10 ** f.fit.predict_log10(xo), "-", color=ln.get_color(), lw=1)
        ax.set_yscale("log")
        ax.set_title(b, fontsize=10)
        ax.set_ylabel("$ per 1M tokens")
        ax.legend(fontsize=6)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    for ax in axes.ravel()[len(benches):]:
        ax.axis("off")
    fig.suptitle("Cheapest price reaching each top-1 model's score (running minimum)")
    return save_figure(fig, path, result.credit, rect=(0, 0.02, 1, 0.97))


def save_figure(fig, path, credit: str, rect: tuple) -> Path:
    """Credit line at the bottom, tight layout inside ``rect``, PNG at 120 dpi (folders made);
    closes the figure and returns the path. Shared by the prices, chinchilla and efficiency plots."""
    import matplotlib.pyplot as plt

    fig.text(0.01, 0.005, credit, fontsize=6)
    fig.tight_layout(rect=rect)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- CLI output
def jsonable(obj):
    """Recursively turn numpy scalars/arrays and tuples into JSON types; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def emit_analysis(result, *, as_json: bool, plot: str | os.PathLike | None, table_fn,
                  plot_fn) -> None:
    """Write the plot (unless ``plot`` is None), then print the rich table or exactly one JSON
    object on stdout (``result.to_dict()`` plus ``"plot"``). Used by ``moorelab trend
    prices|chinchilla|efficiency``."""
    import json
    import sys

    written = str(plot_fn(result, plot)) if plot is not None else None
    if as_json:
        d = result.to_dict()
        d["plot"] = written
        sys.stdout.write(json.dumps(jsonable(d), allow_nan=False) + "\n")
        return
    from rich.console import Console

    from moorelab.law.analysis import print_dropped

    con = Console()
    con.print(table_fn(result))
    print_dropped(con, result.dropped)
    if written:
        con.print(f"plot: {written}")


def emit_prices(result: PricesResult, *, as_json: bool, plot: str | os.PathLike | None) -> None:
    """Table or JSON for ``moorelab trend prices`` (see :func:`emit_analysis`)."""
    emit_analysis(result, as_json=as_json, plot=plot, table_fn=prices_table,
                  plot_fn=plot_prices)
