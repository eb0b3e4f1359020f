"""Compute-equivalent gain (CEG) of a training recipe over a baseline, and the doubling time of
algorithmic efficiency those gains imply.

Definition (Ho et al. 2024, "Algorithmic progress in language models", arXiv 2403.05812;
Sanderson et al. 2025, arXiv 2505.04075; Gundlach et al. 2025, "On the Origin of Algorithmic
Progress in AI", arXiv 2511.21622): a recipe that reaches validation loss ``L`` with compute ``C``
has

    CEG(C) = C_base(L) / C,

where ``C_base(L)`` is the compute the *baseline* recipe needs, on its fitted loss-vs-compute
curve, to reach the same loss. CEG > 1: the recipe saves compute; CEG < 1: it wastes some.

Method, stated once:

* **Baseline curve**: ordinary least squares of ``log10 L`` on ``log10 C`` over the baseline's
  budgets (the mean over seeds at a budget), i.e. a power law ``L = A·C^slope`` without an
  irreducible term (3-4 budgets cannot pin down ``E + A·C^-α``'s three parameters). Inverted:
  ``log10 C_base = (log10 L − intercept) / slope``. The slope must be negative (the baseline's
  loss falls with compute), else no inversion exists (:class:`DataError`).
* **Extrapolation**: a CEG whose ``C_base`` lies outside the baseline's measured budgets is
  flagged ``extrapolated``: it rests on the power law beyond the data.
* **Noise**: the seed-to-seed standard deviation of ``log10 L``, pooled over every (recipe,
  budget) with two or more seeds (``Σ (x − x̄)² / Σ (n − 1)``): measured, never assumed.
* **Interval** (parametric bootstrap): each replicate redraws every measured mean
  ``log10 L`` as itself + N(0, σ²/n_seeds), refits the baseline and inverts again; percentile
  interval at ``ci``. Replicates whose refitted slope is not negative are dropped and counted.
  The interval covers run-to-run noise, not the choice of the power-law form.
* **A recipe's CEG** (one number per recipe, for the trend): the geometric mean of its CEGs over
  the budgets (interval from the same replicates), ``extrapolated`` if any of them is.
* **Doubling time**: :func:`moorelab.law.fit.fit_growth` of the recipes' CEGs (the baseline's is
  1) on their dates in decimal years — OLS of ``log10 CEG`` on the year, the Epoch AI trend
  method — with its OLS interval (scatter of the recipes around the line), plus the interval
  of the same slope over the bootstrap replicates (measurement noise alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

from moorelab.errors import DataError
from moorelab.law.fit import LOG10_2, GrowthFit, fit_growth, slope_interval_to_time


@dataclass(frozen=True)
class LossCurve:
    """``log10 L = intercept + slope · log10 C`` fitted over the budgets ``c_range``.

    Attributes:
        slope: d log10(loss) / d log10(compute) (negative for a loss that falls).
        intercept: log10 loss at C = 1 FLOP.
        c_range: (smallest, largest) budget fitted, FLOP.
        n: budgets fitted.
        r_squared: on the log-log scale (1.0 with two points).
    """

    slope: float
    intercept: float
    c_range: tuple[float, float]
    n: int
    r_squared: float

    def loss_at(self, compute: float | np.ndarray) -> np.ndarray:
        """Fitted loss at ``compute`` FLOP (any shape), in the loss's unit."""
        return 10 ** (self.intercept + self.slope * np.log10(np.asarray(compute, float)))

    def compute_for(self, loss: float | np.ndarray) -> np.ndarray:
        """Compute (FLOP) at which the fitted curve reaches ``loss`` (any shape)."""
        return 10 ** ((np.log10(np.asarray(loss, float)) - self.intercept) / self.slope)


def _line(log_c: np.ndarray, log_l: np.ndarray) -> tuple[float, float]:
    """OLS slope and intercept of log_l on log_c, over the last axis (vectorised)."""
    xm = log_c.mean(-1, keepdims=True)
    ym = log_l.mean(-1, keepdims=True)
    sxx = ((log_c - xm) ** 2).sum(-1)
    slope = ((log_c - xm) * (log_l - ym)).sum(-1) / sxx
    return slope, ym[..., 0] - slope * xm[..., 0]


def fit_loss_curve(compute: Sequence[float], loss: Sequence[float]) -> LossCurve:
    """Fit ``log10 loss`` on ``log10 compute`` by OLS (a power law ``L = A·C^slope``).

    Args:
        compute: shape (n,), training FLOP of each point (> 0).
        loss: shape (n,), validation loss of each point (> 0, any unit: bits per byte).

    Returns:
        :class:`LossCurve`.

    Raises:
        DataError: fewer than two distinct budgets, a value that is not finite and > 0, or a
            slope that is not negative (the loss does not fall with compute: nothing to invert).
    """
    c = np.asarray(compute, float)
    y = np.asarray(loss, float)
    if c.shape != y.shape or c.ndim != 1:
        raise DataError(f"fit_loss_curve: compute and loss must be 1-D of one length, got {c.shape} and {y.shape}")
    for name, v in (("compute", c), ("loss", y)):
        if not np.all(np.isfinite(v) & (v > 0)):
            raise DataError(f"fit_loss_curve: every {name} must be finite and > 0, got {v.tolist()}")
    if np.unique(c).size < 2:
        raise DataError("fit_loss_curve: the baseline needs at least two different compute budgets")
    res = stats.linregress(np.log10(c), np.log10(y))
    if not res.slope < 0:
        raise DataError(f"fit_loss_curve: the baseline's loss does not fall with compute (log-log slope "
                        f"{res.slope:+.4f}); no compute-equivalent gain can be read off it")
    r2 = float(res.rvalue**2) if c.size > 2 else 1.0
    return LossCurve(float(res.slope), float(res.intercept), (float(c.min()), float(c.max())), int(c.size), r2)


def compute_equivalent_gain(curve: LossCurve, compute: float, loss: float) -> dict:
    """CEG of a run that reached ``loss`` with ``compute`` FLOP, against the baseline ``curve``.

    Returns:
        ``{"ceg": C_base / C, "baseline_compute": C_base (FLOP), "extrapolated": bool}``;
        ``extrapolated`` when ``C_base`` is outside ``curve.c_range``.

    Raises:
        DataError: ``compute`` or ``loss`` not finite and > 0.
    """
    if not (compute > 0 and loss > 0 and math.isfinite(compute) and math.isfinite(loss)):
        raise DataError(f"compute_equivalent_gain: compute {compute} and loss {loss} must be finite and > 0")
    c_base = float(curve.compute_for(loss))
    lo, hi = curve.c_range
    # a relative tolerance: the baseline's own points invert to their budgets up to rounding
    extrapolated = not (lo * (1 - 1e-9) <= c_base <= hi * (1 + 1e-9))
    return {"ceg": c_base / compute, "baseline_compute": c_base, "extrapolated": extrapolated}


def seed_noise(groups: dict[tuple, Sequence[float]]) -> dict:
    """Pooled seed-to-seed standard deviation of ``log10 loss``.

    Args:
        groups: ``{(recipe, compute): [loss of each seed]}``.

    Returns:
        ``{"sd_log10": s, "dof": Σ(n − 1), "groups": number of groups with ≥ 2 seeds,
        "sd_relative": 10**s − 1 (the typical relative spread of the loss)}``.

    Raises:
        DataError: no group has two seeds (the noise would be assumed, not measured).
    """
    ss = 0.0
    dof = 0
    n_groups = 0
    for losses in groups.values():
        x = np.log10(np.asarray(losses, float))
        if x.size >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            dof += x.size - 1
            n_groups += 1
    if dof == 0:
        raise DataError("seed noise: no recipe was trained with two or more seeds at one budget")
    s = math.sqrt(ss / dof)
    return {"sd_log10": s, "dof": dof, "groups": n_groups, "sd_relative": 10**s - 1}


@dataclass
class LadderCEG:
    """Every CEG of a ladder, with intervals, and the doubling time they imply.

    Attributes:
        baseline: name of the baseline recipe.
        curve: the baseline's :class:`LossCurve`.
        noise: :func:`seed_noise` output.
        points: one dict per (recipe, budget): ``recipe``, ``compute``, ``loss`` (seed mean),
            ``seeds``, ``ceg``, ``ci``, ``baseline_compute``, ``extrapolated``.
        recipes: one dict per recipe: ``recipe``, ``year``, ``ceg`` (geometric mean over budgets),
            ``ci``, ``extrapolated``.
        fit: :class:`GrowthFit` of CEG on year (None with fewer than three recipes).
        doubling_ci_noise: the doubling (or halving, as ``fit.time_kind``) time's interval in
            months from the percentile interval of the slope over the bootstrap replicates
            (``inf`` = unbounded: the slope interval reaches zero).
        n_boot, n_boot_dropped: replicates drawn, and dropped (baseline slope not negative).
        ci_level: e.g. 0.90.
    """

    baseline: str
    curve: LossCurve
    noise: dict
    points: list[dict]
    recipes: list[dict]
    fit: GrowthFit | None
    doubling_ci_noise: tuple[float, float] | None
    n_boot: int
    n_boot_dropped: int
    ci_level: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready, every figure with its unit."""
        fit = None
        if self.fit is not None:
            f = self.fit
            fit = {"kind": f.time_kind, "doubling_time": {"value": f.doubling_time_months, "unit": "months",
                                                          "ci_ols": [12 * v for v in f.doubling_time_ci_ols],
                                                          "ci_noise": list(self.doubling_ci_noise) if self.doubling_ci_noise else None},
                   "factor_per_year": {"value": f.factor_per_year, "unit": "x/year", "ci_ols": list(f.factor_ci_ols)},
                   "n": f.n, "r_squared": f.r_squared,
                   "note": "a 'halving' kind means the CEG falls with the date: no algorithmic progress measured"}
        return {
            "baseline": self.baseline,
            "ci_level": self.ci_level,
            "baseline_curve": {"slope_log10_loss_per_log10_flop": self.curve.slope,
                               "intercept_log10_loss": self.curve.intercept,
                               "compute_range_flop": list(self.curve.c_range), "n": self.curve.n,
                               "r_squared": self.curve.r_squared},
            "seed_noise": self.noise,
            "points": self.points,
            "recipes": self.recipes,
            "doubling_time_fit": fit,
            "bootstrap": {"replicates": self.n_boot, "dropped": self.n_boot_dropped,
                          "method": "parametric: seed means redrawn with the pooled seed noise"},
            "notes": self.notes,
        }


def _ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    q = np.quantile(samples, [0.5 - level / 2, 0.5 + level / 2])
    return float(q[0]), float(q[1])


def _pow10(pair: tuple[float, float]) -> list[float]:
    return [float(10**pair[0]), float(10**pair[1])]


def ladder_ceg(runs: Sequence[dict], years: dict[str, float], baseline: str, *, ci: float = 0.90,
               n_boot: int = 2000, seed: int = 0) -> LadderCEG:
    """CEG of every recipe at every budget over ``baseline``, and the doubling time.

    Args:
        runs: one dict per training run: ``{"recipe": str, "compute": FLOP, "seed": int, "loss": float}``
            (loss: validation bits per byte, or any loss > 0).
        years: ``{recipe: decimal year}`` (every recipe in ``runs``).
        baseline: the recipe every gain is measured against.
        ci: interval level (two-sided).
        n_boot: bootstrap replicates (≥ 100).
        seed: RNG seed of the bootstrap.

    Returns:
        :class:`LadderCEG`.

    Raises:
        DataError: no baseline runs, a recipe without a date, no seed pairs (noise unmeasured),
            or a baseline curve that cannot be inverted (see :func:`fit_loss_curve`).
    """
    if n_boot < 100:
        raise DataError(f"ladder_ceg: n_boot={n_boot} is too few for a percentile interval (>= 100)")
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        groups.setdefault((r["recipe"], float(r["compute"])), []).append(float(r["loss"]))
    names = list(dict.fromkeys(r["recipe"] for r in runs))
    if baseline not in names:
        raise DataError(f"ladder_ceg: no runs of the baseline {baseline!r}")
    missing = [n for n in names if n not in years]
    if missing:
        raise DataError(f"ladder_ceg: recipe {missing[0]!r} has no date")
    noise = seed_noise(groups)
    sigma = noise["sd_log10"]
    keys = list(groups)
    mean_log = np.array([np.log10(groups[k]).mean() for k in keys])
    n_seeds = np.array([len(groups[k]) for k in keys])
    base_idx = [i for i, k in enumerate(keys) if k[0] == baseline]
    base_c = np.log10([keys[i][1] for i in base_idx])
    curve = fit_loss_curve(10**base_c, 10 ** mean_log[base_idx])

    # replicates: every mean redrawn with its noise, the baseline refitted, every point inverted
    rng = np.random.default_rng(seed)
    draws = mean_log + rng.standard_normal((n_boot, len(keys))) * (sigma / np.sqrt(n_seeds))
    slope_b, icpt_b = _line(np.broadcast_to(base_c, (n_boot, base_c.size)), draws[:, base_idx])
    ok = slope_b < 0
    log_c = np.log10([k[1] for k in keys])
    log_ceg_b = ((draws[ok] - icpt_b[ok, None]) / slope_b[ok, None]) - log_c  # [replicates, points]

    points = []
    for i, (name, c) in enumerate(keys):
        g = compute_equivalent_gain(curve, c, 10 ** mean_log[i])
        points.append({"recipe": name, "compute": {"value": c, "unit": "FLOP"},
                       "loss": {"value": float(10 ** mean_log[i]), "unit": "bits/byte", "note": "geometric mean over seeds"},
                       "seeds": int(n_seeds[i]), "ceg": g["ceg"], "ci": _pow10(_ci(log_ceg_b[:, i], ci)),
                       "baseline_compute": {"value": g["baseline_compute"], "unit": "FLOP"},
                       # the baseline's own points: their CEG is the fit's residual, never a gain
                       "extrapolated": g["extrapolated"] if name != baseline else False})
    recipes = []
    rung_log_b = []
    for name in names:
        idx = [i for i, k in enumerate(keys) if k[0] == name]
        point_log = np.mean([math.log10(points[i]["ceg"]) for i in idx])
        samples = log_ceg_b[:, idx].mean(1)
        rung_log_b.append(samples)
        recipes.append({"recipe": name, "year": years[name], "ceg": float(10**point_log),
                        "ci": _pow10(_ci(samples, ci)),
                        "extrapolated": any(points[i]["extrapolated"] for i in idx), "budgets": len(idx),
                        "note": "geometric mean of the CEGs over the budgets" if name != baseline else
                        "the baseline (CEG 1 by its own fitted curve, up to the fit's residuals)"})

    fit = None
    doubling_noise = None
    notes = []
    base_res = [math.log10(points[i]["ceg"]) for i in base_idx]
    misfit = 10 ** max(abs(v) for v in base_res)
    if misfit > 10 ** (2 * sigma):
        notes.append(f"the baseline's own budgets sit up to x{misfit:.3g} in compute off its fitted power law "
                     f"(CEG {min(10**v for v in base_res):.3g}-{max(10**v for v in base_res):.3g} instead of 1): "
                     "the power law's misfit, larger than the seed noise, is not inside the intervals")
    if len(names) >= 3:
        x = np.array([years[n] for n in names])
        y = np.array([r["ceg"] for r in recipes])
        fit = fit_growth(x, y, ci=ci, n_boot=0, labels=names)
        logs = np.array(rung_log_b)  # [recipes, replicates]
        slopes, _ = _line(np.broadcast_to(x, (logs.shape[1], x.size)), logs.T)
        t = slope_interval_to_time(*_ci(slopes, ci), fit.slope_log10_per_year)
        doubling_noise = (12 * t[0], 12 * t[1])
        if fit.slope_log10_per_year <= 0:
            notes.append("the CEG does not grow with the recipes' dates: no algorithmic progress is measured at this scale")
    else:
        notes.append("fewer than three recipes: no doubling time")
    if not ok.all():
        notes.append(f"{int((~ok).sum())} of {n_boot} bootstrap replicates dropped (baseline slope not negative)")
    return LadderCEG(baseline, curve, noise, points, recipes, fit, doubling_noise, n_boot, int((~ok).sum()), ci, notes)


def months_to_factor_per_year(months: float) -> float:
    """A doubling time in months as a factor per year: ``2^(12 / months)``."""
    return 2.0 ** (12.0 / months)


def factor_per_year_to_months(factor: float) -> float:
    """A factor per year (> 1) as a doubling time in months: ``12·ln 2 / ln factor``."""
    return 12.0 * math.log(2.0) / math.log(factor)


def published_algorithmic_progress() -> list[dict]:
    """The published rates of algorithmic efficiency a ladder is compared with, as doubling
    times of compute-equivalent gain (months), each with its interval, level and source.

    * Ho et al. 2024 (arXiv 2403.05812): the compute needed for a fixed language-model
      performance halves every ~8 months (95% CI 5-14), 2012-2023, fitted on published models.
    * Epoch capabilities index (:data:`moorelab.law.reference.REFERENCE_TRENDS`,
      ``algorithmic_efficiency``, reproduced by ``moorelab trend efficiency``): ×2.90/year
      (90% CI 2.12-3.98).
    * Gundlach et al. 2025 (arXiv 2511.21622): small-scale ablations of the 2012-2023 innovations
      account for less than 10x over those 11 years: at most ×10^(1/11) = ×1.23/year, a doubling
      time of at least 12·11·log10 2 = 39.7 months; most of the 22,000x of Ho et al. is
      scale-dependent (LSTM → Transformer, Kaplan → Chinchilla).
    """
    from moorelab.law.reference import REFERENCE_TRENDS

    eci = REFERENCE_TRENDS["algorithmic_efficiency"]
    lo, hi = eci["ci90"]
    return [
        {"name": "Ho et al. 2024", "doubling_months": 8.0, "ci": [5.0, 14.0], "ci_level": 0.95,
         "bound": None, "scale": "frontier language models 2012-2023 (published results)",
         "source": "Ho et al. 2024, 'Algorithmic progress in language models', arXiv 2403.05812"},
        {"name": "Epoch capabilities index", "doubling_months": factor_per_year_to_months(eci["factor_per_year"]),
         "ci": [factor_per_year_to_months(hi), factor_per_year_to_months(lo)], "ci_level": 0.90,
         "bound": None, "scale": "frontier models, capability at fixed compute",
         "source": eci["source"]},
        {"name": "Gundlach et al. 2025 (small-scale ablations)", "doubling_months": 12 * 11 * LOG10_2,
         "ci": None, "ci_level": None, "bound": "lower",
         "scale": "small models, innovations ablated one at a time (< 10x over 2012-2023)",
         "source": "Gundlach et al. 2025, 'On the Origin of Algorithmic Progress in AI', arXiv 2511.21622"},
    ]
