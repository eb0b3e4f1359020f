"""Growth-rate fits: how fast does a metric double, and how sure are we?

Method (the one used by Epoch AI's trend insights, e.g. "compute-trend-post-2010", Jun 2024):
ordinary least squares of ``log10(y)`` on the date in decimal years,

    log10(y_i) = a + b * x_i + e_i,

so the metric grows by a factor ``10**b`` per year and doubles every ``log10(2) / b`` years
(halves, if ``b < 0``). Two intervals are reported for every figure:

* ``*_ci_ols``: from the slope's standard error and Student's t with ``n - 2`` degrees of
  freedom (the classical OLS interval; what Epoch quotes as "90% CI");
* ``*_ci_boot``: a pairs (case-resampling) percentile bootstrap, vectorised in numpy.
  Resamples whose dates are all equal have no slope: they are skipped and counted
  (``n_boot_degenerate``), never silently replaced.

Figures are monotone transforms of the slope, so their intervals are the transforms of the
slope interval. When a slope interval includes zero the doubling-time interval is unbounded
on one side (``inf``; ``None`` in JSON).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

from moorelab.errors import DataError

LOG10_2 = math.log10(2.0)
_BOOT_CHUNK_ELEMS = 2_000_000  # resamples * points per vectorised chunk (~16 MB per float array)


@dataclass(frozen=True)
class GrowthFit:
    """Result of :func:`fit_growth`. Units: years for x and times, ``x/year`` for factors.

    Attributes:
        n: points used.
        slope_log10_per_year: OLS slope b of log10(y) on years (orders of magnitude / year).
        slope_se: standard error of b.
        intercept_log10: a, the fitted log10(y) at year 0 (use :meth:`predict_log10`).
        direction: "growth" (factor = 10**b) or "decline" (factor = 10**-b, "x cheaper/yr").
        factor_per_year: 10**(+-b) per ``direction``.
        factor_ci_ols, factor_ci_boot: (lo, hi) of the factor at ``ci_level``.
        time_kind: "doubling" if b > 0 else "halving".
        doubling_time_years: log10(2)/|b| (a halving time when ``time_kind == "halving"``).
        doubling_time_ci_ols, doubling_time_ci_boot: (lo, hi) in years (``inf`` = unbounded).
        slope_ci_ols, slope_ci_boot: (lo, hi) of b.
        n_boot: bootstrap resamples drawn; n_boot_degenerate: of those, skipped (all x equal).
        r_squared: coefficient of determination on the log scale.
        resid_sd: residual standard deviation of log10(y) (dof n-2).
        x_mean, sxx: mean of x and sum of squared deviations (for prediction intervals).
        ci_level: e.g. 0.90.
        x_range: (first, last) decimal year of the points used.
        labels: labels of the points used (if given), in input order.
    """

    n: int
    slope_log10_per_year: float
    slope_se: float
    intercept_log10: float
    direction: str
    factor_per_year: float
    factor_ci_ols: tuple[float, float]
    factor_ci_boot: tuple[float, float] | None
    time_kind: str
    doubling_time_years: float
    doubling_time_ci_ols: tuple[float, float]
    doubling_time_ci_boot: tuple[float, float] | None
    slope_ci_ols: tuple[float, float]
    slope_ci_boot: tuple[float, float] | None
    n_boot: int
    n_boot_degenerate: int
    r_squared: float
    resid_sd: float
    x_mean: float
    sxx: float
    ci_level: float
    x_range: tuple[float, float]
    labels: tuple[str, ...] | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ derived figures
    @property
    def doubling_time_months(self) -> float:
        """Doubling (or halving) time in months."""
        return 12.0 * self.doubling_time_years

    def predict_log10(self, x_years: float | np.ndarray) -> np.ndarray:
        """Fitted log10(y) at decimal years ``x_years`` (any shape)."""
        return self.intercept_log10 + self.slope_log10_per_year * np.asarray(x_years, float)

    def prediction_interval_log10(self, x_years: float | np.ndarray, level: float | None = None
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """OLS prediction interval for a NEW observation's log10(y) at ``x_years``.

        ``yhat +- t_{n-2} * s * sqrt(1 + 1/n + (x - xbar)^2 / Sxx)``.
        Returns (yhat, lo, hi), arrays shaped like ``x_years``.
        """
        level = self.ci_level if level is None else level
        x = np.asarray(x_years, float)
        yhat = self.predict_log10(x)
        t = stats.t.ppf(0.5 + level / 2.0, self.n - 2)
        half = t * self.resid_sd * np.sqrt(1.0 + 1.0 / self.n + (x - self.x_mean) ** 2 / self.sxx)
        return yhat, yhat - half, yhat + half

    def to_dict(self) -> dict:
        """Every figure with its unit, JSON-ready (``inf`` and NaN become ``None``)."""
        fu = "x/year" if self.direction == "growth" else "x/year decrease"
        return {
            "n": self.n,
            "ci_level": self.ci_level,
            "direction": self.direction,
            "slope": {"value": _j(self.slope_log10_per_year), "unit": "log10/year",
                      "se": _j(self.slope_se), "ci_ols": _ji(self.slope_ci_ols),
                      "ci_boot": _ji(self.slope_ci_boot)},
            "factor_per_year": {"value": _j(self.factor_per_year), "unit": fu,
                                "ci_ols": _ji(self.factor_ci_ols),
                                "ci_boot": _ji(self.factor_ci_boot)},
            f"{self.time_kind}_time": {
                "value": _j(self.doubling_time_years), "unit": "years",
                "ci_ols": _ji(self.doubling_time_ci_ols),
                "ci_boot": _ji(self.doubling_time_ci_boot)},
            f"{self.time_kind}_time_months": {
                "value": _j(self.doubling_time_months), "unit": "months",
                "ci_ols": _ji(_scale(self.doubling_time_ci_ols, 12.0)),
                "ci_boot": _ji(_scale(self.doubling_time_ci_boot, 12.0))},
            "intercept": {"value": _j(self.intercept_log10), "unit": "log10(y) at year 0"},
            "r_squared": {"value": _j(self.r_squared), "unit": "1"},
            "resid_sd": {"value": _j(self.resid_sd), "unit": "log10"},
            "bootstrap": {"n_boot": self.n_boot, "n_degenerate_skipped": self.n_boot_degenerate,
                          "method": "pairs resampling, percentile interval"},
            "x_range": {"value": [_j(self.x_range[0]), _j(self.x_range[1])],
                        "unit": "decimal year"},
        }


def _j(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _ji(pair: tuple[float, float] | None) -> list | None:
    return None if pair is None else [_j(pair[0]), _j(pair[1])]


def _scale(pair, k):
    return None if pair is None else (pair[0] * k, pair[1] * k)


def slope_to_factor(slope: float | np.ndarray, direction: str = "growth"):
    """Factor per year from a log10 slope: 10**slope (growth) or 10**-slope (decline)."""
    s = np.asarray(slope, float)
    return 10.0 ** (s if direction == "growth" else -s)


def slope_interval_to_time(lo: float, hi: float, point: float) -> tuple[float, float]:
    """Doubling/halving-time interval (years) from a slope interval (lo <= hi, log10/year).

    The time is log10(2)/|b|; if the slope interval crosses zero, the side beyond zero is
    unbounded (``inf``).
    """
    if point >= 0:
        a, b = lo, hi
    else:
        a, b = -hi, -lo  # mirror so that the point estimate is positive
    t_short = LOG10_2 / b if b > 0 else math.inf
    t_long = LOG10_2 / a if a > 0 else math.inf
    return (float(t_short), float(t_long))


def _validate(x_years, y, labels):
    x = np.asarray(x_years, dtype=np.float64).ravel()
    yy = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != yy.shape:
        raise DataError(f"fit_growth: x has {x.size} values but y has {yy.size}")
    lab = None if labels is None else [str(v) for v in labels]
    if lab is not None and len(lab) != x.size:
        raise DataError(f"fit_growth: {len(lab)} labels for {x.size} points")

    def name(i):
        return f"point {i}" + (f" ({lab[i]!r})" if lab is not None else "")

    bad_x = np.flatnonzero(~np.isfinite(x))
    if bad_x.size:
        raise DataError(f"fit_growth: {name(bad_x[0])} has a non-finite date {x[bad_x[0]]}")
    bad_y = np.flatnonzero(~np.isfinite(yy) | (yy <= 0))
    if bad_y.size:
        i = bad_y[0]
        raise DataError(f"fit_growth: {name(i)} has value {yy[i]!r}; a log-scale fit needs "
                        f"finite values > 0 ({bad_y.size} such point(s))")
    if x.size < 3:
        raise DataError(f"fit_growth: {x.size} point(s); a trend fit needs at least 3")
    if np.all(x == x[0]):
        raise DataError(f"fit_growth: all {x.size} points share one date ({x[0]}); "
                        "no slope can be fitted")
    return x, yy, lab


def _ols(x: np.ndarray, ly: np.ndarray):
    n = x.size
    xm = x.mean()
    ym = ly.mean()
    dx = x - xm
    sxx = float(dx @ dx)
    slope = float(dx @ (ly - ym)) / sxx
    intercept = ym - slope * xm
    resid = ly - (intercept + slope * x)
    sse = float(resid @ resid)
    sst = float((ly - ym) @ (ly - ym))
    s2 = sse / (n - 2) if n > 2 else math.nan
    se = math.sqrt(s2 / sxx) if n > 2 else math.nan
    r2 = 1.0 - sse / sst if sst > 0 else 1.0
    return slope, se, intercept, r2, math.sqrt(s2), xm, sxx


def bootstrap_lines(x: np.ndarray, ly: np.ndarray, n_boot: int, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, int]:
    """Pairs-bootstrap OLS lines: like :func:`bootstrap_slopes` (same resamples for the same
    seed) but also returns intercepts, i.e. (slopes, intercepts, n_degenerate) with
    ``ly ~ intercept + slope * x`` for each non-degenerate resample."""
    return _bootstrap(x, ly, n_boot, seed, want_intercepts=True)


def bootstrap_slopes(x: np.ndarray, ly: np.ndarray, n_boot: int, seed: int = 0
                     ) -> tuple[np.ndarray, int]:
    """Pairs-bootstrap OLS slopes of ``ly`` on ``x`` (vectorised, chunked).

    Args:
        x: shape (n,), decimal years. ly: shape (n,), log10 values.
        n_boot: resamples to draw (each of n points, with replacement).
        seed: numpy ``default_rng`` seed (same seed -> same slopes).

    Returns:
        (slopes, n_degenerate): slopes of the non-degenerate resamples, shape (n_boot - k,),
        and k = number of resamples whose x values were all equal (skipped).
    """
    slopes, _, degenerate = _bootstrap(x, ly, n_boot, seed, want_intercepts=False)
    return slopes, degenerate


def _bootstrap(x, ly, n_boot, seed, want_intercepts):
    x = np.asarray(x, float)
    ly = np.asarray(ly, float)
    n = x.size
    rng = np.random.default_rng(seed)
    x0 = x.mean()
    y0 = ly.mean()
    xc = x - x0  # centring keeps the sums well conditioned
    yc = ly - y0
    chunk = max(1, _BOOT_CHUNK_ELEMS // max(n, 1))
    out = []
    out_b = []
    degenerate = 0
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        idx = rng.integers(0, n, size=(b, n))
        xb = xc[idx]
        yb = yc[idx]
        same = xb.max(axis=1) == xb.min(axis=1)
        xbm = xb.mean(axis=1, keepdims=True)
        xb -= xbm
        sxx = np.einsum("ij,ij->i", xb, xb)
        sxy = np.einsum("ij,ij->i", xb, yb)  # sum (x - xbar) y == sum (x - xbar)(y - ybar)
        ok = ~same
        degenerate += int(same.sum())
        slope = sxy[ok] / sxx[ok]
        out.append(slope)
        if want_intercepts:
            # line through the resample means, back in original coordinates
            ybm = yb[ok].mean(axis=1)
            out_b.append(y0 + ybm - slope * (x0 + xbm[ok, 0]))
        done += b
    slopes = np.concatenate(out) if out else np.empty(0)
    intercepts = np.concatenate(out_b) if out_b else None
    return slopes, intercepts, degenerate


def fit_growth(x_years: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
               ci: float = 0.90, n_boot: int = 2000, seed: int = 0,
               labels: Sequence[str] | None = None, direction: str = "growth") -> GrowthFit:
    """Fit exponential growth (or decline) of ``y`` over time.

    Args:
        x_years: shape (n,), dates as decimal years (see :mod:`moorelab.law.dates`).
        y: shape (n,), the metric (any unit), every value finite and > 0.
        ci: interval level, e.g. 0.90 for a 90% interval (two-sided).
        n_boot: pairs-bootstrap resamples (0 = no bootstrap interval).
        seed: bootstrap RNG seed.
        labels: optional names of the points (used in errors and kept in the result).
        direction: "growth" -> factor = 10**b per year; "decline" -> factor = 10**-b
            ("x cheaper per year", as in price-decline papers).

    Returns:
        :class:`GrowthFit`.

    Raises:
        DataError: fewer than 3 points, a value <= 0 or non-finite (names the point), all dates
            equal, mismatched lengths, bad ``direction``/``ci``.

    Method: OLS on log10(y) (Epoch AI trend methodology); t-interval from the slope SE;
    percentile pairs bootstrap with degenerate (all-x-equal) resamples skipped and counted.
    """
    if direction not in ("growth", "decline"):
        raise DataError(f"fit_growth: direction must be 'growth' or 'decline', not {direction!r}")
    if not 0.0 < ci < 1.0:
        raise DataError(f"fit_growth: ci must be in (0, 1), not {ci!r}")
    if n_boot < 0:
        raise DataError(f"fit_growth: n_boot must be >= 0, not {n_boot}")
    x, yy, lab = _validate(x_years, y, labels)
    ly = np.log10(yy)
    n = x.size
    slope, se, intercept, r2, s, xm, sxx = _ols(x, ly)
    t = stats.t.ppf(0.5 + ci / 2.0, n - 2)
    s_ci = (float(slope - t * se), float(slope + t * se))

    def factor_ci(lo, hi):
        a, b = slope_to_factor(lo, direction), slope_to_factor(hi, direction)
        return (float(min(a, b)), float(max(a, b)))

    s_ci_boot = None
    f_ci_boot = None
    t_ci_boot = None
    n_deg = 0
    if n_boot > 0:
        slopes, n_deg = bootstrap_slopes(x, ly, n_boot, seed)
        if slopes.size >= 2:
            q = np.quantile(slopes, [0.5 - ci / 2.0, 0.5 + ci / 2.0])
            s_ci_boot = (float(q[0]), float(q[1]))
            f_ci_boot = factor_ci(*s_ci_boot)
            t_ci_boot = slope_interval_to_time(*s_ci_boot, slope)

    time = LOG10_2 / abs(slope) if slope != 0 else math.inf
    return GrowthFit(
        n=n,
        slope_log10_per_year=slope,
        slope_se=se,
        intercept_log10=float(intercept),
        direction=direction,
        factor_per_year=float(slope_to_factor(slope, direction)),
        factor_ci_ols=factor_ci(*s_ci),
        factor_ci_boot=f_ci_boot,
        time_kind="doubling" if slope > 0 else "halving",
        doubling_time_years=time,
        doubling_time_ci_ols=slope_interval_to_time(*s_ci, slope),
        doubling_time_ci_boot=t_ci_boot,
        slope_ci_ols=s_ci,
        slope_ci_boot=s_ci_boot,
        n_boot=n_boot,
        n_boot_degenerate=n_deg,
        r_squared=r2,
        resid_sd=s,
        x_mean=float(xm),
        sxx=sxx,
        ci_level=ci,
        x_range=(float(x.min()), float(x.max())),
        labels=None if lab is None else tuple(lab),
    )
