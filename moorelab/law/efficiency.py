"""Algorithmic efficiency from the Epoch Capabilities Index (ECI): compute-equivalent gain/year.

Method: Ho, Denain, Atanasov, Albanie & Shah, "A Rosetta Stone for AI Benchmarks" (Epoch AI,
arXiv 2512.00193, notebook ``algorithmic_progress_new.ipynb`` of
github.com/epoch-research/benchmark-stitching; data CC-BY 4.0, credit "Epoch AI"):

1. Stage 1: OLS of capability C (ECI points) on ln(training compute / FLOP) over every model
   with both -> slope k (ECI points per e-fold of compute). One pooled k.
2. Stage 2: b = C - k ln(C_FLOP), the capability not explained by compute; OLS of b on the
   release date t (years) -> db/dt (ECI points per year).
3. A model released one year later reaches the same capability with exp((db/dt) / k) times
   less compute: the compute-equivalent gain per year.

Dates are proleptic ordinal days / 365.25 (Julian years). Intervals: ``ci_fixed_k`` maps the
stage-2 OLS slope interval (Student t, n-2 dof) through exp(./k) at the fitted k (the
published quick-check convention); ``ci_with_k`` adds the uncertainty of k by the delta
method on ln(gain) = (db/dt)/k (same Student t quantile).

Capability frontier rule (stated because the notebook's exact rule is not published): models
with ECI and compute, in release-date order (ties kept in file order), whose ECI is strictly
higher than every model before them (a running maximum). Stage 2 is refitted on them with the
pooled k.

Reproduced (ECI snapshot 2025-11-07, SOURCES.md quick check): pooled k over all 80 models
with compute -> 2.90x/year (90% CI 2.12-3.98), published 2.90x (2.12-3.98). Frontier: this
rule gives n = 15 and 2.57x/year (90% CI 1.47-4.51); the published quick check reports
n = 13, 2.57x (1.23-5.36) — same point estimate, narrower interval because of two more points.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from moorelab.errors import DataError
from moorelab.law.data import EPOCH_CREDIT, DroppedRow, load_capabilities_index

ECI = "ECI Score"
COMPUTE = "Training compute (FLOP)"
NAME = "Model version"
CREDIT = (EPOCH_CREDIT + "; Epoch Capabilities Index; method: Ho et al. 2025, 'A Rosetta "
          "Stone for AI Benchmarks' (Epoch AI)")
PUBLISHED = {
    "source": "SOURCES.md quick check on epoch_capabilities_index_2025-11-07.csv",
    "all_models": {"n": 80, "gain_per_year": 2.90, "ci90": [2.12, 3.98]},
    "frontier": {"n": 13, "gain_per_year": 2.57, "ci90": [1.23, 5.36]},
    "paper_notebook": {"frontier_n": 11, "gain_per_year": 3.15, "ci90": [1.44, 6.89]},
    "ho_2024_lm_algorithmic_progress_approx": 2.8,
}


@dataclass
class OLSLine:
    """y = intercept + slope * x with OLS standard errors; ``ci`` at ``level`` (t, n-2)."""

    slope: float
    intercept: float
    slope_se: float
    slope_ci: tuple[float, float]
    r_squared: float
    n: int
    level: float

    def to_dict(self, unit: str) -> dict:
        return {"value": self.slope, "unit": unit, "se": self.slope_se,
                "ci": list(self.slope_ci), "ci_level": self.level,
                "intercept": self.intercept, "r_squared": self.r_squared, "n": self.n}


def ols_line(x: np.ndarray, y: np.ndarray, *, level: float = 0.90, what: str = "fit"
             ) -> OLSLine:
    """OLS of y on x (shape (n,) each) with the slope's t-interval.

    Raises:
        DataError: fewer than 3 points, or all x equal.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n = x.size
    if n < 3:
        raise DataError(f"efficiency: {what} has {n} point(s); a fit needs at least 3")
    dx = x - x.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise DataError(f"efficiency: {what}: all {n} points share one x value")
    slope = float(dx @ (y - y.mean())) / sxx
    icpt = float(y.mean() - slope * x.mean())
    resid = y - icpt - slope * x
    s2 = float(resid @ resid) / (n - 2)
    se = math.sqrt(s2 / sxx)
    t = stats.t.ppf(0.5 + level / 2, n - 2)
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(resid @ resid) / sst if sst > 0 else 1.0
    return OLSLine(slope, icpt, se, (slope - t * se, slope + t * se), r2, n, level)


@dataclass
class EfficiencyFit:
    """Stage-2 fit and the compute-equivalent gain for one subset of models."""

    subset: str
    models: list[str]
    stage2: OLSLine
    k: float
    k_se: float
    gain_per_year: float
    ci_fixed_k: tuple[float, float]
    ci_with_k: tuple[float, float]

    @property
    def n(self) -> int:
        return self.stage2.n

    @property
    def doubling_time_months(self) -> float:
        """Months for the compute-equivalent gain to double."""
        return 12 * math.log(2) / math.log(self.gain_per_year) if self.gain_per_year > 1 \
            else math.inf

    def to_dict(self) -> dict:
        return {
            "subset": self.subset, "n": self.n,
            "db_dt": self.stage2.to_dict("ECI points per year"),
            "compute_equivalent_gain_per_year": {
                "value": self.gain_per_year, "unit": "x less compute per year",
                "ci_fixed_k": list(self.ci_fixed_k), "ci_with_k": list(self.ci_with_k),
                "ci_level": self.stage2.level},
            "doubling_time": {"value": _j(self.doubling_time_months), "unit": "months"},
            "models": self.models,
        }


def _j(v):
    return v if math.isfinite(v) else None


@dataclass
class EfficiencyResult:
    """Stage 1 (k), stage 2 for all models and for the capability frontier, row accounting."""

    stage1: OLSLine
    all_models: EfficiencyFit
    frontier: EfficiencyFit | None
    frontier_rule: str
    n_input: int
    dropped: list[DroppedRow]
    files: list[str]
    points: pd.DataFrame = field(repr=False, default=None)
    credit: str = CREDIT

    def to_dict(self) -> dict:
        return {
            "analysis": "efficiency",
            "what": "algorithmic efficiency: compute-equivalent gain per year at fixed ECI",
            "method": "two-stage OLS (Ho et al. 2025): ECI ~ k ln(FLOP); b = ECI - k ln(FLOP) "
                      "~ years; gain = exp((db/dt)/k); years = ordinal day / 365.25",
            "credit": self.credit,
            "k": self.stage1.to_dict("ECI points per ln(FLOP)"),
            "all_models": self.all_models.to_dict(),
            "frontier": None if self.frontier is None else self.frontier.to_dict(),
            "frontier_rule": self.frontier_rule,
            "published": PUBLISHED,
            "rows": {"n_input": self.n_input, "n_used": self.all_models.n,
                     "n_dropped": len(self.dropped),
                     "dropped": [d.to_dict() for d in self.dropped]},
            "files": self.files,
        }


FRONTIER_RULE = ("running maximum: a model (with ECI and compute) is on the capability "
                 "frontier if its ECI is strictly higher than that of every model released "
                 "before it (release-date order, ties in file order)")


def julian_years(iso_dates) -> np.ndarray:
    """ISO dates -> ordinal day / 365.25 (float years), shape (n,)."""
    return np.array([_dt.date.fromisoformat(str(d)).toordinal() / 365.25 for d in iso_dates])


def capability_frontier(points: pd.DataFrame) -> np.ndarray:
    """Boolean mask (shape (n,)) of :data:`FRONTIER_RULE` over ``points`` (columns ``date``
    ISO str and ``eci``), in input order."""
    order = np.argsort(points["date"].to_numpy().astype(str), kind="stable")
    eci = points["eci"].to_numpy()
    mask = np.zeros(len(points), bool)
    best = -math.inf
    for i in order:
        if eci[i] > best:
            mask[i] = True
            best = eci[i]
    return mask


def _stage2(subset: str, pts: pd.DataFrame, k: float, k_se: float, level: float
            ) -> EfficiencyFit:
    b = pts["eci"].to_numpy() - k * np.log(pts["compute"].to_numpy())
    line = ols_line(pts["t"].to_numpy(), b, level=level, what=f"stage 2 ({subset})")
    g = line.slope / k
    lo, hi = line.slope_ci
    fixed = tuple(sorted((math.exp(lo / k), math.exp(hi / k))))
    se_g = math.sqrt((line.slope_se / k) ** 2 + (line.slope * k_se / k ** 2) ** 2)
    z = stats.t.ppf(0.5 + level / 2, line.n - 2)
    with_k = (math.exp(g - z * se_g), math.exp(g + z * se_g))
    return EfficiencyFit(subset, [str(m) for m in pts["label"]], line, k, k_se, math.exp(g),
                         fixed, with_k)


def efficiency_trend(frame: pd.DataFrame, *, dropped: list[DroppedRow] | None = None,
                     n_input: int | None = None, files=(), level: float = 0.90
                     ) -> EfficiencyResult:
    """Two-stage algorithmic-efficiency estimate from an ECI table.

    Args:
        frame: rows of :func:`moorelab.law.data.load_capabilities_index` (columns
            ``Model version``, ``ECI Score`` (ECI points), ``Training compute (FLOP)``,
            ``date`` ISO, ``row``, ``file``).
        dropped: rows already dropped at load; n_input: rows read; files: source files.
        level: interval level (0.90).

    Returns:
        :class:`EfficiencyResult`.

    Raises:
        DataError: missing column, training compute <= 0 (names file, row, field), fewer than
            3 usable models, all dates equal.
    """
    dropped = list(dropped or [])
    n_in = n_input if n_input is not None else len(frame) + len(dropped)
    for c in (NAME, ECI, COMPUTE, "date"):
        if c not in frame.columns:
            raise DataError(f"{', '.join(files) or '<table>'}: missing column {c!r}")
    keep = []
    for i, r in frame.iterrows():
        row = int(r["row"]) if "row" in frame.columns else i
        fi = str(r["file"]) if "file" in frame.columns else ""
        label = str(r[NAME])
        if pd.isna(r[ECI]):
            dropped.append(DroppedRow(row, label, f"{ECI} missing", fi))
            continue
        if pd.isna(r[COMPUTE]):
            dropped.append(DroppedRow(row, label, f"{COMPUTE} missing", fi))
            continue
        if not (math.isfinite(r[COMPUTE]) and r[COMPUTE] > 0):
            raise DataError(f"{fi or '<table>'} row {row}, field '{COMPUTE}': {r[COMPUTE]!r} "
                            "must be > 0 (log scale)")
        keep.append(i)
    f = frame.loc[keep]
    pts = pd.DataFrame({"label": f[NAME].to_numpy(), "date": f["date"].astype(str).to_numpy(),
                        "eci": f[ECI].to_numpy(float), "compute": f[COMPUTE].to_numpy(float),
                        "row": f["row"].to_numpy() if "row" in f.columns else f.index})
    if len(pts) < 3:
        raise DataError(f"{', '.join(files) or '<table>'}: {len(pts)} model(s) with ECI, "
                        "compute and date; the fit needs at least 3")
    pts["t"] = julian_years(pts["date"])
    s1 = ols_line(np.log(pts["compute"].to_numpy()), pts["eci"].to_numpy(), level=level,
                  what="stage 1 (ECI on ln compute)")
    k, k_se = s1.slope, s1.slope_se
    if k <= 0:
        raise DataError(f"efficiency: stage-1 slope k = {k:.3g} <= 0 (ECI does not rise with "
                        "compute); no efficiency gain can be defined")
    all_fit = _stage2("all models with compute", pts, k, k_se, level)
    mask = capability_frontier(pts)
    pts["frontier"] = mask
    front = _stage2("capability frontier", pts[mask], k, k_se, level) if mask.sum() >= 3 \
        else None
    return EfficiencyResult(s1, all_fit, front, FRONTIER_RULE, n_in, dropped, list(files), pts)


def run_efficiency(data_dir: str | os.PathLike | None = None, *, snapshot: str = "2025-11",
                   level: float = 0.90) -> EfficiencyResult:
    """Load the ECI table (``DIR/epoch-benchmark-stitching/epoch_capabilities_index_2025-11-07.csv``
    by default; ``snapshot="2026-01"`` for the benchmarking-hub copy) and run
    :func:`efficiency_trend`. Rows without a release date are dropped (reported).

    Raises:
        DataError: missing file/column, unparseable date (file, row, field), compute <= 0.
    """
    t = load_capabilities_index(data_dir, snapshot=snapshot)
    return efficiency_trend(t.frame, dropped=t.dropped, n_input=t.n_input, files=t.files,
                            level=level)


# --------------------------------------------------------------------------- presentation
def efficiency_table(result: EfficiencyResult):
    """A rich Table with k, db/dt and the compute-equivalent gain per year."""
    from rich.table import Table

    pct = int(round(result.stage1.level * 100))
    tab = Table(title=f"Algorithmic efficiency from the ECI (k = {result.stage1.slope:.3f} "
                      f"± {result.stage1.slope_se:.3f} ECI per ln FLOP, n = {result.stage1.n})",
                caption=result.credit + f" | rows: {result.all_models.n} used, "
                f"{len(result.dropped)} dropped of {result.n_input} | frontier: "
                + result.frontier_rule)
    # one column per subset, one row per figure: readable at 80 columns (cells fold, never cut)
    fits = [f for f in (result.all_models, result.frontier) if f is not None]
    tab.add_column("figure", overflow="fold")
    for fit in fits:
        tab.add_column(fit.subset, justify="right", overflow="fold")
    pub = {"all models with compute": PUBLISHED["all_models"],
           "capability frontier": PUBLISHED["frontier"]}
    rows = [
        ("models (n)", lambda f: str(f.n)),
        ("db/dt (ECI/yr)", lambda f: f"{f.stage2.slope:.2f}"),
        ("gain (x/yr)", lambda f: f"{f.gain_per_year:.3g}"),
        (f"{pct}% CI, k fixed", lambda f: f"{f.ci_fixed_k[0]:.3g} – {f.ci_fixed_k[1]:.3g}"),
        (f"{pct}% CI, k uncertain", lambda f: f"{f.ci_with_k[0]:.3g} – {f.ci_with_k[1]:.3g}"),
        ("doubling (months)", lambda f: f"{f.doubling_time_months:.1f}"),
        ("published (Epoch)", lambda f: (lambda p: f"{p['gain_per_year']}x ({p['ci90'][0]} – "
                                                   f"{p['ci90'][1]}), n={p['n']}")(pub[f.subset])),
    ]
    for name, cell in rows:
        tab.add_row(name, *(cell(f) for f in fits))
    return tab


def plot_efficiency(result: EfficiencyResult, path: str | os.PathLike) -> Path:
    """Save a figure: stage 1 (ECI vs FLOP) and stage 2 (b vs date, all and frontier fits).
    Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result.points
    k = result.stage1.slope
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    fr = pts["frontier"].to_numpy()
    ax1.scatter(pts["compute"], pts["eci"], s=12, c="tab:blue", label="models")
    ax1.scatter(pts["compute"][fr], pts["eci"][fr], s=25, facecolors="none",
                edgecolors="tab:red", label="capability frontier")
    xs = np.logspace(np.log10(pts["compute"].min()), np.log10(pts["compute"].max()), 50)
    ax1.plot(xs, result.stage1.intercept + k * np.log(xs), "k-", lw=1,
             label=f"k = {k:.2f} ECI per ln FLOP")
    ax1.set_xscale("log")
    ax1.set_xlabel("training compute (FLOP)")
    ax1.set_ylabel("ECI")
    ax1.legend(fontsize=7)
    b = pts["eci"] - k * np.log(pts["compute"])
    dates = np.array([np.datetime64(d) for d in pts["date"]])
    ax2.scatter(dates, b, s=12, c="tab:blue")
    ax2.scatter(dates[fr], b[fr], s=25, facecolors="none", edgecolors="tab:red")
    for fit, color in ((result.all_models, "k"), (result.frontier, "tab:red")):
        if fit is None:
            continue
        sel = pts if fit is result.all_models else pts[fr]
        order = np.argsort(sel["t"].to_numpy())
        t = sel["t"].to_numpy()[order]
        d = np.array([np.datetime64(x) for x in sel["date"].to_numpy()[order]])
        ax2.plot(d, fit.stage2.intercept + fit.stage2.slope * t, "-", color=color, lw=1,
                 label=f"{fit.subset}: {fit.gain_per_year:.2f}x/yr (n={fit.n})")
    ax2.set_ylabel("b = ECI - k ln(FLOP)")
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle("Compute-equivalent algorithmic gain from the Epoch Capabilities Index")
    from moorelab.law.prices import save_figure

    return save_figure(fig, path, result.credit, rect=(0, 0.03, 1, 0.95))


def emit_efficiency(result: EfficiencyResult, *, as_json: bool,
                    plot: str | os.PathLike | None) -> None:
    """Table or JSON for ``moorelab trend efficiency``."""
    from moorelab.law.prices import emit_analysis

    emit_analysis(result, as_json=as_json, plot=plot, table_fn=efficiency_table,
                  plot_fn=plot_efficiency)
