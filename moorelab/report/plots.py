"""Plots for the report (matplotlib, Agg backend): trend fits and quality-vs-speed."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ax.scatter(x, y, s=22, color="#1f77b4", zorder=3, label="models")
    for xi, yi, lab in zip(x, y, labels):
        ax.annotate(lab, (xi, yi), fontsize=6.5, xytext=(3, 2), textcoords="offset points")
    grid = np.linspace(x.min() - 0.3, x.max() + 0.3, 100)
    yhat, lo, hi = fit.prediction_interval_log10(grid)
    ax.plot(grid, 10**yhat, color="#d62728", lw=1.6,
            label=f"fit: ×{fit.factor_per_year:.2f}/year, doubling {fit.doubling_time_months:.1f} months")
    ax.fill_between(grid, 10**lo, 10**hi, color="#d62728", alpha=0.12,
                    label=f"{fit.ci_level:.0%} prediction interval")
    ax.set_yscale("log")
    ax.set_xlabel("publication date (year)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left")
    fig.text(0.01, 0.005, credit, fontsize=7, color="#555")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_quality_vs_speed(path: Path, rows: list[dict]) -> Path:
    """Bits per byte (lower is better) against decode tokens/s (higher is better), one point per row.

    Args:
        path: PNG to write.
        rows: results rows (see :mod:`moorelab.measure.row`) with ``bits_per_byte`` and
            ``decode_tokens_per_s`` metrics.

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for row in rows:
        m = row["metrics"]
        xs, ys = m["decode_tokens_per_s"]["value"], m["bits_per_byte"]["value"]
        size = 40 + 160 * (m["weight_bytes"]["value"] / max(r["metrics"]["weight_bytes"]["value"] for r in rows))
        ax.scatter([xs], [ys], s=size, alpha=0.8, zorder=3)
        ax.annotate(f"{row['name']}\n{m['weight_bytes']['value'] / 1e6:.0f} MB", (xs, ys), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("decode speed (tokens/s, batch 1) → better")
    ax.set_ylabel("bits per byte ← better")
    ax.set_title("Quality against decode speed (marker area ∝ weight bytes)")
    ax.grid(True, alpha=0.3)
    ax.margins(0.25)
    fig.tight_layout()
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


def plot_pareto(path: Path, rows: list[dict]) -> Path:
    """Quality (bits per byte) against cost ($ per 1M decoded tokens) over all rows, with the
    Pareto front (lower-left is better on both axes).

    Args:
        path: PNG to write.
        rows: results rows with ``bits_per_byte`` and ``usd_per_million_tokens_decode``.

    Returns:
        ``path``.
    """
    pts = [(r["metrics"]["usd_per_million_tokens_decode"]["value"], r["metrics"]["bits_per_byte"]["value"]) for r in rows]
    front = pareto_front(pts)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    for i, (r, (x, y)) in enumerate(zip(rows, pts)):
        ax.scatter([x], [y], s=50, zorder=3, color="#d62728" if i in front else "#1f77b4")
        ax.annotate(r["name"], (x, y), fontsize=7.5, xytext=(5, 3), textcoords="offset points")
    fx = [pts[i][0] for i in front]
    fy = [pts[i][1] for i in front]
    ax.step(fx, fy, where="post", color="#d62728", lw=1.2, alpha=0.7, label="Pareto front")
    ax.set_xlabel("cost: $ per 1M decoded tokens (batch 1, this machine) ← better")
    ax.set_ylabel("bits per byte ← better")
    ax.set_title("Quality against cost, every variant")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.margins(0.2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_batched_decode(path: Path, points: list[dict]) -> Path:
    """Decode tokens/s (all sequences) and $ per 1M tokens against the batch size.

    Args:
        path: PNG to write.
        points: :func:`moorelab.measure.batched.measure_batched_decode` rows (``batch``,
            ``decode_tokens_per_s``, ``usd_per_million_tokens``, each ``{"value", "unit"}``).

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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
