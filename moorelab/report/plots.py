"""Plots for the report (matplotlib, Agg backend): trend fits and quality-vs-speed."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402


def plot_trend(
    path: Path,
    x_years: Sequence[float],
    y: Sequence[float],
    labels: Sequence[str],
    fit,
    *,
    ylabel: str,
    title: str,
    credit: str,
) -> Path:
    """Scatter of the points on a log scale with the fitted line and its prediction band.

    Args:
        path: PNG to write.
        x_years: decimal years of the points.
        y: values (> 0).
        labels: point labels (annotated).
        fit: a :class:`moorelab.law.fit.GrowthFit` over these points.
        ylabel, title: axis label and title.
        credit: source credit printed under the plot.

    Returns:
        ``path``.
    """
    x = np.asarray(x_years, float)
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    ax.scatter(x, y, s=18, color="#1f77b4", zorder=3, label="models")
    for xi, yi, lab in zip(x, y, labels):
        ax.annotate(lab, (xi, yi), fontsize=5.5, xytext=(3, 2), textcoords="offset points")
    grid = np.linspace(x.min() - 0.3, x.max() + 0.3, 100)
    yhat, lo, hi = fit.prediction_interval_log10(grid)
    ax.plot(grid, 10**yhat, color="#d62728", lw=1.6,
            label=f"fit: ×{fit.factor_per_year:.2f}/year, doubling {fit.doubling_time_months:.1f} months")
    ax.fill_between(grid, 10**lo, 10**hi, color="#d62728", alpha=0.12,
                    label=f"{fit.ci_level:.0%} prediction interval")
    ax.set_yscale("log")
    ax.set_xlabel("publication date (year)", fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.text(0.01, 0.005, credit, fontsize=6, color="#555", wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_quality_vs_speed(path: Path, rows: list[dict], *, credit: str | None = None) -> Path:
    """Bits per byte (lower is better) against decode tokens/s (higher is better), one point per row.

    Args:
        path: PNG to write.
        rows: results rows (see :mod:`moorelab.measure.row`) with ``bits_per_byte`` and
            ``decode_tokens_per_s`` metrics.
        credit: data credit printed under the plot (default: "measured by moorelab in this run").

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    for row in rows:
        m = row["metrics"]
        xs, ys = m["decode_tokens_per_s"]["value"], m["bits_per_byte"]["value"]
        size = 40 + 160 * (m["weight_bytes"]["value"] / max(r["metrics"]["weight_bytes"]["value"] for r in rows))
        ax.scatter([xs], [ys], s=size, alpha=0.8, zorder=3)
        ax.annotate(f"{row['name']}\n{m['weight_bytes']['value'] / 1e6:.0f} MB", (xs, ys), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("decode speed, tokens/s (batch 1); right is better", fontsize=8)
    ax.set_ylabel("bits per byte (bits/byte); lower is better", fontsize=8)
    ax.set_title("Quality against decode speed (marker area ∝ weight bytes, MB)", fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.margins(0.25)
    fig.text(0.01, 0.005, credit or "Data: measured by moorelab in this run.", fontsize=6, color="#555", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when both coordinates are costs (lower is better).

    A point is dominated if another is ≤ in both coordinates and < in at least one. Returned in
    order of increasing first coordinate.
    """
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i
        )
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])


def plot_pareto(path: Path, rows: list[dict], *, credit: str | None = None) -> Path:
    """Quality (bits per byte) against cost ($ per 1M decoded tokens) over all rows, with the
    Pareto front (lower-left is better on both axes).

    Args:
        path: PNG to write.
        rows: results rows with ``bits_per_byte`` and ``usd_per_million_tokens_decode``.
        credit: data credit printed under the plot (default: "measured by moorelab in this run").

    Returns:
        ``path``.
    """
    pts = [(r["metrics"]["usd_per_million_tokens_decode"]["value"], r["metrics"]["bits_per_byte"]["value"]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    for i, (r, (x, y)) in enumerate(zip(rows, pts)):
        ax.scatter([x], [y], s=40, zorder=3, color="#d62728" if i in front else "#1f77b4")
        ax.annotate(r["name"], (x, y), fontsize=7, xytext=(5, 3), textcoords="offset points")
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="#d62728", lw=1.2, alpha=0.7, label="Pareto front")
    ax.set_xlabel("cost, $ per 1M decoded tokens (batch 1, this machine); left is better", fontsize=8)
    ax.set_ylabel("bits per byte (bits/byte); lower is better", fontsize=8)
    ax.set_title("Quality against cost, every variant", fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.margins(0.2)
    fig.text(0.01, 0.005, credit or "Data: measured by moorelab in this run.", fontsize=6, color="#555", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


#: reference trends' names in words on the plot
_TREND_LABELS = {"algorithmic_efficiency": "algorithmic progress", "llm_price_at_fixed_capability": "LLM price at fixed capability"}


def months_points(rows: list[dict]) -> list[dict]:
    """Where each variant sits on the reference trends: per non-baseline row with a tokens-per-$
    factor, ``{"name", "gain", "gain_ci", "credited", "why", "months": {trend: {"value", "ci"}}}``.

    A credited row's months are the ones the run computed (``performance_per_cost.months_of_trend``);
    a row not credited (quality rule broken, no measurable difference) gets the months its speed
    alone would be worth (:func:`moorelab.law.months.months_of_reference`), flagged
    ``credited: False`` with the verdict as ``why``. A row without a factor (disturbed timing)
    or with a factor of exactly 1 is left out.
    """
    from moorelab.law.months import months_of_reference

    out = []
    for r in rows[1:]:
        pc = r.get("performance_per_cost")
        if not pc:
            continue
        g = pc["gain_vs_baseline"]
        if g.get("value") is None or g["value"] == 1:
            continue
        months = pc["months_of_trend"] if pc["credited"] else months_of_reference(g["value"])
        out.append({"name": r["name"], "gain": g["value"], "gain_ci": g.get("ci"), "credited": pc["credited"],
                    "why": pc["verdict"], "months": {k: {"value": m["value"], "ci": m.get("ci")} for k, m in months.items()}})
    return out


def plot_months_on_trend(path: Path, rows: list[dict], *, credit: str) -> Path:
    """The variants placed on the field's reference trends: for each trend
    (:data:`moorelab.law.reference.REFERENCE_TRENDS`) the factor it reaches after a number of
    months (a line, with its 90% band), and each variant's tokens per $ against the baseline
    drawn at the months of that trend it is worth (interval bars: the gain's and the trend's).
    Filled markers: gains credited at equal quality; hollow grey: not credited (where the speed
    alone would sit).

    Args:
        path: PNG to write.
        rows: results rows (the first is the baseline) with ``performance_per_cost``.
        credit: data credit printed under the plot (the trends' source and licence, the run).

    Returns:
        ``path``.
    """
    from moorelab.law.reference import REFERENCE_TRENDS

    pts = months_points(rows)
    finite = [v for p in pts for m in p["months"].values()
              for v in [m["value"], *(m["ci"] or [])] if v is not None and np.isfinite(v)]
    lo_x = min([-2.0, *finite]) - 1.0
    hi_x = max([12.0, *[v for v in finite if v < 120]]) * 1.08
    gains = [v for p in pts for v in [p["gain"], *(p["gain_ci"] or [])]]
    lo_y, hi_y = min([1.0, *gains]) / 1.4, max([1.0, *gains]) * 1.4
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=150)
    grid = np.linspace(lo_x, hi_x, 200)
    colors = {}
    for (name, t), color in zip(REFERENCE_TRENDS.items(), ("#1f77b4", "#ff7f0e", "#2ca02c")):
        colors[name] = color
        f, (c_lo, c_hi) = t["factor_per_year"], t["ci90"]
        ax.plot(grid, f ** (grid / 12), color=color, lw=1.5,
                label=f"{_TREND_LABELS.get(name, name)}: ×{f:g}/year")
        a, b = c_lo ** (grid / 12), c_hi ** (grid / 12)
        ax.fill_between(grid, np.minimum(a, b), np.maximum(a, b), color=color, alpha=0.10, lw=0)
    ax.axhline(1.0, color="#888", lw=0.8)
    ax.axvline(0.0, color="#888", lw=0.8)
    ax.annotate("baseline", (0, 1), xytext=(4, -10), textcoords="offset points", fontsize=7, color="#555")
    for p in pts:
        xs = [m["value"] for m in p["months"].values()]
        ax.plot([0, max(xs, key=abs)], [p["gain"], p["gain"]], ls=":", lw=0.8, color="#555" if p["credited"] else "#aaa")
        for name, m in p["months"].items():
            ci = m["ci"]
            xerr = None
            if ci and all(np.isfinite(c) for c in ci):
                xerr = [[m["value"] - ci[0]], [ci[1] - m["value"]]]
            yerr = [[p["gain"] - p["gain_ci"][0]], [p["gain_ci"][1] - p["gain"]]] if p["gain_ci"] else None
            color = colors.get(name, "#333") if p["credited"] else "#999"
            ax.errorbar([m["value"]], [p["gain"]], xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=2, lw=0.9,
                        color=color, mfc=color if p["credited"] else "white", mec=color, zorder=3)
        label = p["name"] + ("" if p["credited"] else " (not credited)")
        ax.annotate(label, (0, p["gain"]), xytext=(4, 3), textcoords="offset points", fontsize=6.5,
                    ha="left", color="#222" if p["credited"] else "#777")
    ax.plot([], [], "o", color="#333", label="variant, credited at equal quality")
    ax.plot([], [], "o", color="#999", mfc="white", label="variant not credited: where its speed alone would sit")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"×{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(lo_x, hi_x)
    ax.set_ylim(lo_y, hi_y)
    ax.set_xlabel("months of the reference trend (time the field took to gain that factor)", fontsize=8)
    ax.set_ylabel("tokens per $ against the baseline (×, log scale)", fontsize=8)
    ax.set_title("Your variants placed on the field's trends", fontsize=10)
    ax.tick_params(labelsize=7)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=6, loc="best")
    if not pts:
        ax.text(0.5, 0.55, "no variant has a tokens-per-$ figure to place", transform=ax.transAxes, ha="center", fontsize=8)
    fig.text(0.01, 0.005, credit, fontsize=6, color="#555", wrap=True)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


_RUNG_COLORS = ("#7f7f7f", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e")


def plot_ladder_curves(path: Path, runs: list[dict], ceg) -> Path:
    """Validation bits per byte against training compute, one colour per rung (log-log): every
    run a dot, the seed means joined, the baseline's fitted power law dashed.

    Args:
        path: PNG to write.
        runs: ladder runs (``recipe``, ``compute`` FLOP, ``loss`` bits/byte).
        ceg: the :class:`moorelab.law.ceg.LadderCEG` of those runs.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=110)
    names = list(dict.fromkeys(r["recipe"] for r in runs))
    for k, name in enumerate(names):
        color = _RUNG_COLORS[k % len(_RUNG_COLORS)]
        mine = [r for r in runs if r["recipe"] == name]
        ax.scatter([r["compute"] for r in mine], [r["loss"] for r in mine], s=18, color=color, alpha=0.7, zorder=3)
        pts = sorted((p["compute"]["value"], p["loss"]["value"]) for p in ceg.points if p["recipe"] == name)
        ax.plot([c for c, _ in pts], [v for _, v in pts], color=color, lw=1.5, marker="o", ms=4, label=name)
    lo, hi = ceg.curve.c_range
    grid = np.geomspace(lo / 2, hi * 2, 50)
    ax.plot(grid, ceg.curve.loss_at(grid), "--", color=_RUNG_COLORS[0], lw=1,
            label=f"{ceg.baseline} fit: L ∝ C^{ceg.curve.slope:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    for which in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        which(ScalarFormatter())
    ax.set_xlabel("training compute (FLOP, 6N + attention per token)")
    ax.set_ylabel("validation bits per byte ← better")
    ax.set_title("Loss against compute, per recipe")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_ceg_bars(path: Path, ceg) -> Path:
    """Compute-equivalent gain of every rung at every budget (log scale), with its interval;
    hatched bars needed extrapolation past the baseline's budgets.

    Args:
        path: PNG to write.
        ceg: a :class:`moorelab.law.ceg.LadderCEG`.

    Returns:
        ``path``.
    """
    names = [r["recipe"] for r in ceg.recipes]
    budgets = sorted({p["compute"]["value"] for p in ceg.points if p["recipe"] == ceg.baseline})
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    width = 0.8 / len(budgets)
    for j, name in enumerate(names):
        mine = sorted((p for p in ceg.points if p["recipe"] == name), key=lambda p: p["compute"]["value"])
        for i, p in enumerate(mine):
            x = j + (i - (len(mine) - 1) / 2) * width
            lo, hi = p["ci"]
            ax.bar(x, p["ceg"], width=width * 0.9, color=_RUNG_COLORS[j % len(_RUNG_COLORS)], alpha=0.35 + 0.6 * i / max(1, len(mine) - 1),
                   hatch="//" if p["extrapolated"] else None, edgecolor="#333", lw=0.5)
            # a percentile interval need not contain the point (rounding, skew): never a negative bar
            ax.errorbar(x, p["ceg"], yerr=[[max(0.0, p["ceg"] - lo)], [max(0.0, hi - p["ceg"])]], color="#222",
                        capsize=2, lw=0.8)
    ax.axhline(1.0, color="#555", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel(f"compute-equivalent gain over {ceg.baseline}")
    ax.set_title(f"CEG per budget (bars left to right: {len(budgets)} budgets, small to large; {ceg.ci_level:.0%} intervals)")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_ladder_trend(path: Path, ceg, published: list[dict]) -> Path:
    """CEG (log) against the recipe's date with intervals, the fitted trend, and each published
    rate drawn as a line from the baseline (its date, CEG 1) — shaded where it has an interval,
    dotted where it is a bound.

    Args:
        path: PNG to write.
        ceg: a :class:`moorelab.law.ceg.LadderCEG`.
        published: :func:`moorelab.law.ceg.published_algorithmic_progress` output.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    x = np.array([r["year"] for r in ceg.recipes])
    y = np.array([r["ceg"] for r in ceg.recipes])
    lo = np.array([r["ci"][0] for r in ceg.recipes])
    hi = np.array([r["ci"][1] for r in ceg.recipes])
    ax.errorbar(x, y, yerr=[np.maximum(0.0, y - lo), np.maximum(0.0, hi - y)], fmt="o", color="#1f77b4", capsize=3, zorder=4, label="rungs (CEG, geometric mean over budgets)")
    for r in ceg.recipes:
        ax.annotate(r["recipe"], (r["year"], r["ceg"]), fontsize=7.5, xytext=(4, 4), textcoords="offset points")
    x0 = x.min()
    grid = np.linspace(x0, x.max() + 0.5, 50)
    if ceg.fit is not None:
        f = ceg.fit
        ax.plot(grid, 10 ** f.predict_log10(grid), color="#1f77b4", lw=1.5,
                label=f"this ladder: {f.time_kind} {f.doubling_time_months:.3g} months")
    styles = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
    for k, p in enumerate(published):
        color = styles[k % len(styles)]
        rate = lambda months: 2.0 ** ((grid - x0) * 12.0 / months)  # noqa: E731
        ls = ":" if p["bound"] else "--"
        label = f"{p['name']}: doubling {p['doubling_months']:.3g} months" + (" (lower bound)" if p["bound"] == "lower" else "")
        ax.plot(grid, rate(p["doubling_months"]), ls, color=color, lw=1.2, label=label)
        if p["ci"]:
            ax.fill_between(grid, rate(p["ci"][1]), rate(p["ci"][0]), color=color, alpha=0.08)
    ax.set_yscale("log")
    ax.set_xlabel("date of the recipe's paper (year)")
    ax.set_ylabel("compute-equivalent gain over the 2017 recipe")
    ax.set_title("Algorithmic efficiency: measured here vs published rates (scale-dependent!)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_batched_decode(path: Path, points: list[dict], *, credit: str | None = None) -> Path:
    """Decode tokens/s (all sequences) and $ per 1M tokens against the batch size.

    Args:
        path: PNG to write.
        points: :func:`moorelab.measure.batched.measure_batched_decode` rows (``batch``,
            ``decode_tokens_per_s``, ``usd_per_million_tokens``, each ``{"value", "unit"}``).
        credit: data credit printed under the plot (default: "measured by moorelab in this run").

    Returns:
        ``path``.
    """
    b = [p["batch"] for p in points]
    tps = [p["decode_tokens_per_s"]["value"] for p in points]
    usd = [p["usd_per_million_tokens"]["value"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(b, tps, "o-", color="tab:blue")
    ax.set_xscale("log", base=2)
    ax.set_xticks(b, [str(x) for x in b])
    ax.set_xlabel("sequences decoded together (batch)")
    ax.set_ylabel("decode tokens/s (all sequences)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(b, usd, "s--", color="tab:red")
    ax2.set_ylabel("$ per 1M decoded tokens", color="tab:red")
    ax.set_title("Batched decode (ragged lengths)")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.text(0.01, 0.005, credit or "Data: measured by moorelab in this run.", fontsize=6, color="#555", wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
