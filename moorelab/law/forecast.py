"""``moorelab trend forecast``: when does a trend cross a threshold, and how sure are we?

Given an OLS fit log10(y) = a + b x, the fitted line crosses a threshold T at

    x* = (log10 T - a) / b.

Two intervals are reported:

* prediction interval (OLS): the dates where the level-``ci`` prediction band for a NEW
  observation, yhat(x) +- t_{n-2} s sqrt(1 + 1/n + (x - xbar)^2 / Sxx), meets log10 T
  (inverse prediction / calibration; Draper & Smith, "Applied Regression Analysis", 3.2).
  Earliest date: the upper band reaches T; latest date: the lower band reaches T. If the
  band widens faster than the line rises the latest date is unbounded (inf).
* bootstrap interval of x* (pairs bootstrap of the line; resamples with all dates equal or
  with a slope of the wrong sign are skipped and counted).

The default selection for training compute is the frontier of running records, because
"when does the largest training run cross T" is a claim about the frontier.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from scipy import optimize

from moorelab.errors import MoorelabError
from moorelab.law.analysis import TrendResult, _tex
from moorelab.law.data import TrendPoints, points_from_frame, read_table
from moorelab.law.dates import year_to_date
from moorelab.law.fit import GrowthFit, bootstrap_lines, fit_growth


def crossing_year(fit: GrowthFit, threshold: float) -> float:
    """Decimal year at which the fitted line reaches ``threshold`` (same unit as y).
    ``inf`` if the slope is zero."""
    if threshold <= 0:
        raise MoorelabError(f"forecast: threshold must be > 0, not {threshold}")
    if fit.slope_log10_per_year == 0:
        return math.inf
    return (math.log10(threshold) - fit.intercept_log10) / fit.slope_log10_per_year


def crossing_prediction_interval(fit: GrowthFit, threshold: float, level: float | None = None,
                                 horizon_years: float = 200.0) -> tuple[float, float]:
    """(earliest, latest) decimal years from inverting the OLS prediction band (module doc).

    Returns ``inf``/``-inf`` for a side that the band never reaches within ``horizon_years``
    of the fitted crossing.
    """
    level = fit.ci_level if level is None else level
    lt = math.log10(threshold)
    x_star = crossing_year(fit, threshold)
    sgn = 1.0 if fit.slope_log10_per_year > 0 else -1.0

    def band(x, side):
        _, lo, hi = fit.prediction_interval_log10(x, level)
        return float(hi if side == "hi" else lo) - lt

    # growth: the upper band reaches T first (earliest), the lower band last (latest);
    # decline: the lower band goes below T first.
    first, last = ("hi", "lo") if sgn > 0 else ("lo", "hi")
    out = []
    for side, direction in ((first, -1.0), (last, +1.0)):
        a = x_star
        b = x_star + direction * horizon_years
        fa, fb = band(a, side), band(b, side)
        if np.sign(fa) == np.sign(fb) or fa == 0:
            # the band does not cross within the horizon (or crosses exactly at x*)
            out.append(x_star if fa == 0 else direction * math.inf)
            continue
        out.append(optimize.brentq(lambda x: band(x, side), min(a, b), max(a, b), xtol=1e-6))
    return (out[0], out[1])


def crossing_bootstrap(x: np.ndarray, y: np.ndarray, threshold: float, *, level: float,
                       n_boot: int, seed: int) -> dict:
    """Percentile interval of the crossing year over pairs-bootstrap lines.

    Returns {"ci": (lo, hi) or None, "n_boot", "n_degenerate", "n_wrong_sign"}; resamples with
    all x equal (degenerate) or a slope whose sign differs from the full fit's are skipped and
    counted.
    """
    ly = np.log10(np.asarray(y, float))
    slopes, inter, n_deg = bootstrap_lines(np.asarray(x, float), ly, n_boot, seed)
    full = np.polyfit(x, ly, 1)[0]
    ok = np.sign(slopes) == np.sign(full)
    xs = (math.log10(threshold) - inter[ok]) / slopes[ok]
    ci = None
    if xs.size >= 2:
        q = np.quantile(xs, [0.5 - level / 2, 0.5 + level / 2])
        ci = (float(q[0]), float(q[1]))
    return {"ci": ci, "n_boot": n_boot, "n_degenerate": n_deg,
            "n_wrong_sign": int((~ok).sum())}


def load_points_csv(path: str | os.PathLike, *, date_col: str = "date",
                    value_col: str = "value", label_col: str | None = None) -> TrendPoints:
    """Any metric over time from a CSV (dates YYYY-MM-DD, values > 0), every row accounted
    for (value missing / <= 0 / duplicate -> reported drop; bad date -> DataError naming the
    row)."""
    req = [date_col, value_col] + ([label_col] if label_col else [])
    df = read_table(path, required=req)
    if label_col is None:
        df = df.assign(_label=[f"row {r}" for r in df.index])
        label_col = "_label"
    return points_from_frame(df, label_col=label_col, date_col=date_col, value_col=value_col,
                             file=str(path), unit=value_col)


def _fmt_year(y: float) -> str:
    if not math.isfinite(y):
        return "never (unbounded)" if y > 0 else "-inf"
    return year_to_date(y).isoformat()


def forecast_points(points: TrendPoints, threshold: float, *, ci: float = 0.90,
                    n_boot: int = 2000, seed: int = 0) -> tuple[GrowthFit, dict]:
    """Fit ``points`` and forecast the crossing of ``threshold``. Returns (fit, figures)."""
    fit = fit_growth(points.year, points.value, ci=ci, n_boot=n_boot, seed=seed,
                     labels=list(points.label))
    x_star = crossing_year(fit, threshold)
    pi = crossing_prediction_interval(fit, threshold, ci)
    boot = crossing_bootstrap(points.year, points.value, threshold, level=ci, n_boot=n_boot,
                              seed=seed) if n_boot else {"ci": None}
    figs = {
        "crossing date (fitted line)": {"value": _fmt_year(x_star), "unit": "date",
                                        "year": x_star},
        f"{round(ci * 100)}% prediction interval": {
            "value": f"{_fmt_year(pi[0])} to {_fmt_year(pi[1])}", "unit": "dates",
            "interval": [_fmt_year(pi[0]), _fmt_year(pi[1])], "years": list(pi)},
    }
    if boot["ci"] is not None:
        figs[f"{round(ci * 100)}% bootstrap interval of the crossing"] = {
            "value": f"{_fmt_year(boot['ci'][0])} to {_fmt_year(boot['ci'][1])}",
            "unit": "dates", "interval": [_fmt_year(v) for v in boot["ci"]],
            "years": list(boot["ci"]), "n_degenerate": boot["n_degenerate"],
            "n_wrong_sign": boot["n_wrong_sign"]}
    above = points.value >= threshold if fit.slope_log10_per_year > 0 else \
        points.value <= threshold
    if above.any():
        i = int(np.argmin(np.where(above, points.year, np.inf)))
        figs["already crossed by the data"] = {
            "value": f"{points.label[i]} ({points.date[i]})", "unit": "point"}
    return fit, figs


def run_forecast(threshold: float, *, trend: str = "compute",
                 data_dir: str | os.PathLike | None = None, frontier: str = "record",
                 csv: str | os.PathLike | None = None, date_col: str = "date",
                 value_col: str = "value", label_col: str | None = None, ci: float = 0.90,
                 n_boot: int = 2000, seed: int = 0) -> TrendResult:
    """The ``forecast`` analysis: crossing date of ``threshold`` for a trend.

    Args:
        threshold: value to cross (unit of the metric: FLOP for compute, FLOP/s per $ for
            hardware).
        trend: "compute" (Epoch notable models since 2010; ``frontier`` none|record|top10),
            "hardware", "facts" (embedded table), or "csv" (``csv`` with ``date_col``,
            ``value_col``, ``label_col``).

    Raises:
        MoorelabError / DataError: bad threshold, unknown trend, unreadable data.
    """
    if not (threshold > 0) or not math.isfinite(threshold):
        raise MoorelabError(f"forecast: threshold must be a finite value > 0, not {threshold}")
    credit = None
    if trend == "compute":
        from moorelab.law.compute import compute_points
        from moorelab.law.data import load_notable_models

        pts, cand = compute_points(load_notable_models(data_dir), frontier=frontier)
        metric, unit = "training compute", "FLOP"
        title = f"When does training compute ({'frontier: ' + frontier}) reach {threshold:.3g} FLOP?"
    elif trend in ("hardware", "facts"):
        from moorelab.law.months import trend_fit

        base = trend_fit(trend, data_dir, ci=ci, n_boot=0)
        pts, cand = base.points, None
        metric, unit, credit = base.metric, base.unit, base.credit
        title = f"When does '{trend}' reach {threshold:.3g} {unit}?"
    elif trend == "csv":
        if csv is None:
            raise MoorelabError("forecast: --trend csv needs --csv PATH")
        pts = load_points_csv(csv, date_col=date_col, value_col=value_col, label_col=label_col)
        cand = None
        metric, unit, credit = value_col, value_col, ""
        title = f"When does {value_col} ({Path(csv).name}) reach {threshold:.3g}?"
    else:
        raise MoorelabError(f"forecast: unknown trend {trend!r}: compute, hardware, facts, csv")
    fit, figs = forecast_points(pts, threshold, ci=ci, n_boot=n_boot, seed=seed)
    res = TrendResult(name="forecast", title=title, fit=fit, points=pts,
                      background=cand if cand is not None and cand.n != pts.n else None,
                      metric=metric, unit=unit, figures=figs,
                      selection={"threshold": threshold, "trend": trend, "frontier": frontier
                                 if trend == "compute" else None, "ci": ci, "n_boot": n_boot,
                                 "seed": seed})
    if credit is not None:
        res.credit = credit
    pi = figs[f"{round(ci * 100)}% prediction interval"]["years"]
    x_star = figs["crossing date (fitted line)"]["year"]
    if all(math.isfinite(v) for v in pi):
        res.marks.append({"y": threshold, "x_lo": pi[0], "x_hi": pi[1],
                          "label": f"{round(ci * 100)}% prediction interval of the crossing"})
    res.notes.append("Prediction interval: inverse of the OLS prediction band for a new "
                     "observation; bootstrap: percentile interval of the fitted line's "
                     "crossing over pairs resamples.")
    res.plotter = _plot_forecast if math.isfinite(x_star) else None
    return res


def _plot_forecast(result: TrendResult, path) -> str:
    """Trend plot extended to the crossing date, with the prediction band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result.fit
    p = result.points
    thr = result.selection["threshold"]
    x_star = result.figures["crossing date (fitted line)"]["year"]
    x_end = max(f.x_range[1], x_star) + 1.0
    x_end = min(x_end, f.x_range[1] + 60)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    if result.background is not None:
        ax.scatter(result.background.year, result.background.value, s=8, color="0.8",
                   label="not selected")
    ax.scatter(p.year, p.value, s=14, color="C0", label=f"used (n={p.n})")
    xs = np.linspace(f.x_range[0], x_end, 300)
    yhat, lo, hi = f.prediction_interval_log10(xs)
    ax.plot(xs, 10 ** yhat, color="C3", label=f"fit {f.factor_per_year:.3g}x/yr")
    ax.fill_between(xs, 10 ** lo, 10 ** hi, color="C3", alpha=0.12,
                    label=f"{round(f.ci_level * 100)}% prediction band")
    ax.axhline(thr, color="k", ls="--", lw=0.8, label=f"threshold {thr:.3g}")
    for m in result.marks:
        ax.axvspan(max(m["x_lo"], xs[0]), min(m["x_hi"], x_end), color="C2", alpha=0.15,
                   label=m.get("label"))
    ax.set_yscale("log")
    ax.set_xlabel("date (year)")
    ax.set_ylabel(_tex(f"{result.metric} ({result.unit})"))
    ax.set_title(_tex(result.title), fontsize=10)
    ax.legend(fontsize=8)
    if result.credit:
        fig.text(0.99, 0.01, result.credit, ha="right", va="bottom", fontsize=7, color="0.4")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
