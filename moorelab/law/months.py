"""``moorelab trend months``: express a gain factor as months of a chosen trend.

If a trend improves a metric by a factor F per year (slope b = log10 F per year), a one-off
gain G (e.g. a method that makes a model 2.4x cheaper) is worth

    months = 12 * log10(G) / b

of that trend. The interval maps the trend's slope interval (OLS t and bootstrap) through the
same formula; a slope interval that reaches zero gives an unbounded upper end. With a custom
trend (factor per year F and interval [lo, hi]) the interval is 12*ln G / ln hi to
12*ln G / ln lo. Example: 2.4x at Epoch's 4.7x/yr (4.3-5.2) compute trend = 6.79 months
(6.37-7.19).

The reference trends of :mod:`moorelab.law.reference` (``algorithmic_efficiency``,
``llm_price_at_fixed_capability``: the ones `moorelab run` and `moorelab improve` express gains
in) are trends given as a factor per year with a 90% interval; with them a loss (G < 1) is
reported as negative months, exactly as in those jobs' results.json.
"""

from __future__ import annotations

import math
import os

from moorelab.errors import MoorelabError
from moorelab.law.analysis import TrendResult
from moorelab.law.fit import GrowthFit
from moorelab.law.reference import REFERENCE_TRENDS


def months_from_slope(gain: float, slope: float) -> float:
    """Months of a trend with log10 slope ``slope`` (per year) that a gain ``gain`` is worth."""
    if slope == 0:
        return math.inf
    return 12.0 * abs(math.log10(gain)) / abs(slope)


def _interval(gain: float, slope_ci: tuple[float, float] | None, slope: float):
    if slope_ci is None:
        return None
    lo, hi = slope_ci
    if slope < 0:
        lo, hi = -hi, -lo
    m_short = months_from_slope(gain, hi) if hi > 0 else math.inf
    m_long = months_from_slope(gain, lo) if lo > 0 else math.inf
    return (m_short, m_long)


def months_of_fit(gain: float, fit: GrowthFit) -> dict:
    """Months of ``fit``'s trend worth a gain ``gain`` (> 0, != 1), with OLS and bootstrap
    intervals (months). Returns {"value", "ci_ols", "ci_boot", "unit": "months"}."""
    _check_gain(gain)
    s = fit.slope_log10_per_year
    return {"value": months_from_slope(gain, s), "unit": "months",
            "ci_ols": _interval(gain, fit.slope_ci_ols, s),
            "ci_boot": _interval(gain, fit.slope_ci_boot, s)}


def months_of_factor(gain: float, factor_per_year: float,
                     factor_ci: tuple[float, float] | None = None) -> dict:
    """Months of a trend given as a factor per year (> 0, != 1) and optional interval (x/yr).
    The factor is taken in the gain's direction (4.7 means 4.7x better per year)."""
    _check_gain(gain)
    if factor_per_year <= 0 or factor_per_year == 1:
        raise MoorelabError(f"months: factor per year must be > 0 and != 1, "
                            f"not {factor_per_year}")
    s = math.log10(factor_per_year)
    ci = None
    if factor_ci is not None:
        lo, hi = sorted(factor_ci)
        if lo <= 0:
            raise MoorelabError(f"months: factor interval must be > 0, not {factor_ci}")
        ci = _interval(gain, (math.log10(lo), math.log10(hi)), s)
    return {"value": months_from_slope(gain, s), "unit": "months", "ci": ci}


def signed_months_of_factor(gain: float, factor_per_year: float,
                            factor_ci: tuple[float, float] | None = None) -> dict:
    """:func:`months_of_factor` with a sign: negative months (and a mirrored interval) for a loss
    (gain < 1), i.e. how long the trend takes to win back what was lost."""
    m = months_of_factor(gain, factor_per_year, factor_ci)
    if gain < 1:
        ci = m.get("ci")
        m = {**m, "value": -m["value"], "ci": None if ci is None else (-ci[1], -ci[0])}
    return m


def months_of_reference(gain: float) -> dict:
    """Months of each reference trend (:data:`moorelab.law.reference.REFERENCE_TRENDS`) that a
    gain factor is worth.

    Args:
        gain: a factor > 0, != 1 (e.g. 2.4 = 2.4x less cost for the same quality).

    Returns:
        ``{trend name: {"value": months, "unit": "months", "ci": (lo, hi), "factor_per_year",
        "source", "command"}}``; months are negative for a loss (gain < 1); ``command`` is the
        ``moorelab trend months`` call that reproduces the figure.

    Raises:
        MoorelabError: gain ≤ 0 or == 1.
    """
    out = {}
    for name, t in REFERENCE_TRENDS.items():
        m = signed_months_of_factor(gain, t["factor_per_year"], t["ci90"])
        out[name] = {**m, "factor_per_year": t["factor_per_year"], "source": t["source"],
                     "command": f"moorelab trend months {gain:.6g} --trend {name}"}
    return out


def _check_gain(gain: float) -> None:
    if not (gain > 0) or gain == 1 or not math.isfinite(gain):
        raise MoorelabError(f"months: gain must be a finite factor > 0 and != 1, not {gain}")


def trend_fit(trend: str, data_dir=None, *, ci: float = 0.90, n_boot: int = 2000,
              seed: int = 0) -> TrendResult:
    """The TrendResult of a named trend: "compute", "hardware" (need data) or "facts"
    (the embedded notable-LM table, offline)."""
    if trend == "compute":
        from moorelab.law.compute import run_compute

        return run_compute(data_dir, ci=ci, n_boot=n_boot, seed=seed)
    if trend == "hardware":
        from moorelab.law.hardware import run_hardware

        return run_hardware(data_dir, ci=ci, n_boot=n_boot, seed=seed)
    if trend == "facts":

        from moorelab.law.data import TrendPoints
        from moorelab.law.facts import FACTS_PATH, fit_facts_compute_trend, load_facts

        df, dropped = load_facts()
        fit = fit_facts_compute_trend(df, ci=ci, n_boot=n_boot, seed=seed)
        have = df["training_compute_flop"].notna()
        pts = TrendPoints(label=df["model"][have].to_numpy(object),
                          date=df["publication_date"][have].to_numpy(object),
                          year=df["year"][have].to_numpy(float),
                          value=df["training_compute_flop"][have].to_numpy(float),
                          row=df["row"][have].to_numpy(int), unit="FLOP",
                          source=str(FACTS_PATH), n_input=len(df) + len(dropped),
                          dropped=list(dropped))
        from moorelab.law.data import DroppedRow

        for _, r in df[~have].iterrows():
            pts.dropped.append(DroppedRow(int(r["row"]), r["model"], "training compute missing",
                                          str(FACTS_PATH)))
        return TrendResult(name="facts", title="Training compute of notable language models "
                           "(embedded facts table)", fit=fit, points=pts,
                           metric="training compute", unit="FLOP",
                           credit="Facts: papers/model cards cited per row; some compute "
                                  "figures are Epoch AI estimates (CC-BY 4.0)")
    raise MoorelabError(f"unknown trend {trend!r}: {', '.join(TREND_NAMES)}")


#: every name ``run_months`` accepts as ``trend``
TREND_NAMES = ("compute", "hardware", "facts", *REFERENCE_TRENDS, "custom")


def run_months(gain: float, *, trend: str = "compute", data_dir: str | os.PathLike | None = None,
               factor_per_year: float | None = None, ci_lo: float | None = None,
               ci_hi: float | None = None, ci: float = 0.90, n_boot: int = 2000,
               seed: int = 0) -> TrendResult:
    """The ``months`` analysis: ``gain`` expressed in months of ``trend``.

    Args:
        gain: factor (> 0, != 1), e.g. 2.4 for "2.4x cheaper".
        trend: "compute" | "hardware" | "facts" | "algorithmic_efficiency" |
            "llm_price_at_fixed_capability" | "custom" (custom: ``factor_per_year`` and
            optionally ``ci_lo``/``ci_hi`` in x/year). The two reference trends
            (:mod:`moorelab.law.reference`) give signed months (negative for gain < 1).

    Raises:
        MoorelabError: bad gain, unknown trend, custom trend without a factor.
    """
    _check_gain(gain)
    if trend == "custom" or factor_per_year is not None:
        if factor_per_year is None:
            raise MoorelabError("months: --trend custom needs --factor-per-year")
        if (ci_lo is None) != (ci_hi is None):
            raise MoorelabError("months: give both --ci-lo and --ci-hi, or neither")
        fci = (ci_lo, ci_hi) if ci_lo is not None else None
        m = months_of_factor(gain, factor_per_year, fci)
        res = TrendResult(
            name="months", title=f"{gain:g}x in months of a {factor_per_year:g}x/yr trend",
            credit="", selection={"gain": gain, "trend": "custom",
                                  "factor_per_year": factor_per_year, "factor_ci": fci})
        res.figures["months"] = {"value": m["value"], "unit": "months", "ci": m["ci"]}
        res.figures["trend factor per year"] = {"value": factor_per_year, "unit": "x/year",
                                                "ci": fci}
        res.plotter = _plot_custom
        return res
    if trend in REFERENCE_TRENDS:
        t = REFERENCE_TRENDS[trend]
        m = signed_months_of_factor(gain, t["factor_per_year"], t["ci90"])
        res = TrendResult(
            name="months", title=f"{gain:g}x in months of the reference trend '{trend}' "
                                 f"({t['factor_per_year']:g}x/yr)",
            credit=t["source"], selection={"gain": gain, "trend": trend,
                                           "factor_per_year": t["factor_per_year"],
                                           "factor_ci": list(t["ci90"])})
        res.figures["months"] = {"value": m["value"], "unit": "months", "ci": m["ci"]}
        res.figures["trend factor per year"] = {"value": t["factor_per_year"], "unit": "x/year",
                                                "ci": list(t["ci90"])}
        res.notes.append(f"{t['description']}; months = 12 * ln({gain:g}) / ln({t['factor_per_year']:g}), "
                         "negative for a loss; interval from the trend's 90% interval.")
        res.plotter = _plot_custom
        return res
    base = trend_fit(trend, data_dir, ci=ci, n_boot=n_boot, seed=seed)
    m = months_of_fit(gain, base.fit)
    res = TrendResult(
        name="months", title=f"{gain:g}x expressed in months of the '{trend}' trend "
                             f"({base.fit.factor_per_year:.3g}x/yr)",
        fit=base.fit, points=base.points, metric=base.metric, unit=base.unit,
        credit=base.credit, selection={"gain": gain, "trend": trend, "ci": ci,
                                       "n_boot": n_boot})
    res.figures["months"] = {"value": m["value"], "unit": "months", "ci": m["ci_ols"],
                             "ci_boot": m["ci_boot"]}
    res.figures["years"] = {"value": m["value"] / 12, "unit": "years",
                            "ci": None if m["ci_ols"] is None else
                            [v / 12 for v in m["ci_ols"]]}
    res.notes.append(f"months = 12 * log10({gain:g}) / slope; interval from the slope's "
                     f"{round(ci * 100)}% CI (OLS t; bootstrap in JSON as ci_boot).")
    return res


def _plot_custom(result: TrendResult, path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sel = result.selection
    F = sel["factor_per_year"]
    gains = np.logspace(np.log10(1.05), np.log10(max(100.0, sel["gain"] * 2)), 200)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.plot(gains, 12 * np.log(gains) / abs(np.log(F)), color="C0", label=f"{F:g}x/yr")
    if sel["factor_ci"]:
        lo, hi = sorted(sel["factor_ci"])
        ax.fill_between(gains, 12 * np.log(gains) / abs(np.log(hi)),
                        12 * np.log(gains) / abs(np.log(lo)), color="C0", alpha=0.2,
                        label=f"{lo:g}-{hi:g}x/yr")
    m = result.figures["months"]["value"]
    ax.plot([sel["gain"]], [m], "o", color="C3", label=f"{sel['gain']:g}x = {m:.3g} months")
    ax.set_xscale("log")
    ax.set_xlabel("gain factor")
    ax.set_ylabel("months of the trend")
    ax.set_title(result.title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
