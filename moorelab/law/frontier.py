"""Frontier selection and date windows, with every excluded point reported.

Claims about "the frontier" (the best model so far, the cheapest chip so far) must be fitted
on the frontier, not on all points. Two selections are offered:

* :func:`running_record_frontier` -- running record setters. Points are taken in date order
  (ties in date broken by source row); a point is on the frontier iff its value is STRICTLY
  better than every point with an EARLIER date. Tie rule: of several points on the same date
  that beat the earlier record, only the best one is a record (equal best: the first in source
  order); a point that merely equals the record is not a record.
* :func:`top_k_frontier` -- "top-k at release" (Cottier et al. 2024, arXiv 2405.21015, use
  k = 10): a point is kept iff fewer than k points dated on or before it are strictly better.

:func:`window` keeps points with ``start <= date < end`` (ISO dates; either bound optional).
Every excluded point is appended to ``TrendPoints.dropped`` with its reason.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from moorelab.errors import DataError
from moorelab.law.data import TrendPoints
from moorelab.law.dates import decimal_year, parse_date


def _order(points: TrendPoints) -> np.ndarray:
    return np.lexsort((points.row, points.year))


def running_record_frontier(points: TrendPoints, *, higher_is_better: bool = True
                            ) -> TrendPoints:
    """Keep only running record setters (see module doc for the tie rule).

    Args:
        points: candidate points (any order).
        higher_is_better: True for compute/capability (running max), False for prices
            (running min).

    Returns:
        TrendPoints of the records in their original order; the others are dropped with the
        reason naming the record they failed to beat.
    """
    n = points.n
    sign = 1.0 if higher_is_better else -1.0
    v = sign * points.value
    order = _order(points)
    keep = np.zeros(n, bool)
    reasons = [""] * n
    best_val = -np.inf
    best_label = None
    i = 0
    word = "exceed" if higher_is_better else "undercut"
    while i < n:
        j = i
        while j < n and points.year[order[j]] == points.year[order[i]]:
            j += 1
        group = order[i:j]  # same date, in source-row order
        top = group[np.argmax(v[group])]  # argmax returns the first of equal maxima
        for g in group:
            if g == top and v[g] > best_val:
                keep[g] = True
            elif v[g] > best_val:
                reasons[g] = (f"not a frontier record (same-date point "
                              f"{points.label[top]!s} is at least as good)")
            else:
                reasons[g] = (f"not a frontier record (does not {word} "
                              f"{best_label!s}: {sign * best_val:.4g})")
        if v[top] > best_val:
            best_val = v[top]
            best_label = points.label[top]
        i = j
    return points.subset(keep, reasons)


def top_k_frontier(points: TrendPoints, k: int = 10, *, higher_is_better: bool = True
                   ) -> TrendPoints:
    """Keep points that were among the top ``k`` at their date (ties: equal values do not
    push a point out). Cottier et al. 2024 use k = 10 on training compute."""
    if k < 1:
        raise DataError(f"top_k_frontier: k must be >= 1, not {k}")
    sign = 1.0 if higher_is_better else -1.0
    v = sign * points.value
    keep = np.zeros(points.n, bool)
    reasons = [""] * points.n
    for i in range(points.n):
        earlier = points.year <= points.year[i]
        better = int(np.sum(earlier & (v > v[i])))
        keep[i] = better < k
        if not keep[i]:
            reasons[i] = f"not in top {k} at release ({better} earlier points better)"
    return points.subset(keep, reasons)


def window(points: TrendPoints, start: str | _dt.date | None = None,
           end: str | _dt.date | None = None) -> TrendPoints:
    """Keep points with ``start <= date < end`` (ISO YYYY-MM-DD strings or dates).

    Raises:
        DataError: unparseable bound, or ``end <= start``.
    """
    lo = -np.inf
    hi = np.inf
    s = e = None
    if start is not None:
        s = start if isinstance(start, _dt.date) else parse_date(start, file="window", row="-",
                                                                  field="start")
        lo = decimal_year(s)
    if end is not None:
        e = end if isinstance(end, _dt.date) else parse_date(end, file="window", row="-",
                                                              field="end")
        hi = decimal_year(e)
    if hi <= lo:
        raise DataError(f"window: end {e} is not after start {s}")
    keep = (points.year >= lo) & (points.year < hi)
    reasons = [
        (f"before window start {s}" if y < lo else f"on or after window end {e}")
        for y in points.year
    ]
    return points.subset(keep, reasons)
