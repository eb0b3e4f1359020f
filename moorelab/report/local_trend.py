"""``moorelab trend local``: your own Moore's law, fitted over your run history.

The records of :mod:`moorelab.measure.history` (one per measured row of every job) are a dated
series of the user's own measurements. This analysis fits how fast the user's best-so-far
performance per cost improves, with the same frontier and fit as the published trends:

1. metric per record (:data:`LOCAL_METRICS`): ``tokens_per_usd`` = 1e6 / ($ per 1M decoded
   tokens), or ``decode_tokens_per_s``; date = the record's UTC date (decimal year);
2. excluded and counted, each with its reason: rows flagged ``speed_disturbed`` (their speed,
   hence their cost, is not comparable), rows above ``--max-bits-per-byte`` (or without bits per
   byte when that bound is given: a cheaper model is only progress at the same quality), rows
   missing the metric;
3. frontier: running best (:func:`moorelab.law.frontier.running_record_frontier`), so the fit
   follows the user's records, not every experiment;
4. fit: :func:`moorelab.law.fit.fit_growth` (OLS of log10 on decimal years, OLS t and
   pairs-bootstrap intervals), placed beside the reference trends of
   :mod:`moorelab.law.reference` (their factors per year and 90% intervals).

Fewer than 3 usable records, all on one date, or fewer than 3 best-so-far records is a
:class:`LocalTrendError`: a doubling time needs runs on different dates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer

from moorelab.errors import MoorelabError
from moorelab.law.analysis import TrendResult
from moorelab.law.data import DroppedRow, TrendPoints
from moorelab.law.dates import decimal_year, parse_date
from moorelab.law.fit import fit_growth
from moorelab.law.frontier import running_record_frontier
from moorelab.law.reference import REFERENCE_TRENDS
from moorelab.measure import history

#: metric -> (unit, how it is computed from a record: (record) -> value or None)
LOCAL_METRICS: dict[str, tuple[str, object]] = {
    "tokens_per_usd": ("decoded tokens per $",
                       lambda r: None if not r.get("usd_per_million_tokens") else 1e6 / r["usd_per_million_tokens"]),
    "decode_tokens_per_s": ("tokens/s", lambda r: r.get("decode_tokens_per_s")),
}

#: kinds of excluded records, in the order they are checked (keys of ``excluded`` in figures)
EXCLUDE_KINDS = ("speed disturbed", "above --max-bits-per-byte", "no bits per byte",
                 "metric missing or <= 0", "not a best-so-far record")


class LocalTrendError(MoorelabError):
    """The history does not hold enough usable runs for a trend (names the counts)."""


def _label(r: dict) -> str:
    name = r.get("row_name") or r.get("technique") or ""
    return f"#{r['id']} {r.get('model') or '?'} {name}".strip()


def local_trend(records: list[dict], *, metric: str = "tokens_per_usd",
                max_bits_per_byte: Optional[float] = None, ci: float = 0.90, n_boot: int = 2000,
                seed: int = 0, source: str = "history") -> TrendResult:
    """Fit the growth of the user's best-so-far ``metric`` over their run history.

    Args:
        records: history records (:func:`moorelab.measure.history.list_records`).
        metric: a key of :data:`LOCAL_METRICS` (higher is better).
        max_bits_per_byte: keep only records at or below this quality bound (bits/byte).
        ci: interval level; n_boot: bootstrap resamples; seed: bootstrap seed.
        source: where the records came from (the database path), for the report.

    Returns:
        A :class:`~moorelab.law.analysis.TrendResult`: ``fit`` on the running-best records,
        ``points`` (used; every other record in ``dropped`` with its reason), ``background``
        (the usable records), ``figures`` with the user's factor per year beside the reference
        trends', ``selection["excluded"]`` with the count of each kind of exclusion.

    Raises:
        LocalTrendError: unknown metric, fewer than 3 usable records, all on one date, fewer
            than 3 best-so-far records.
    """
    if metric not in LOCAL_METRICS:
        raise LocalTrendError(f"--metric {metric!r}: choose one of {', '.join(LOCAL_METRICS)}")
    unit, value_of = LOCAL_METRICS[metric]
    if not records:
        raise LocalTrendError(f"no runs recorded in {source} yet (every `moorelab run` and `moorelab "
                              "improve` adds its rows); a doubling time needs at least 3 runs on different dates")
    counts = {k: 0 for k in EXCLUDE_KINDS}
    dropped: list[DroppedRow] = []
    keep = []
    for r in records:
        reason = None
        if r.get("speed_disturbed"):
            reason = "speed disturbed"
        elif max_bits_per_byte is not None and r.get("bits_per_byte") is None:
            reason = "no bits per byte"
        elif max_bits_per_byte is not None and r["bits_per_byte"] > max_bits_per_byte:
            reason = "above --max-bits-per-byte"
        else:
            v = value_of(r)
            if v is None or not np.isfinite(v) or v <= 0:
                reason = "metric missing or <= 0"
        if reason is None:
            keep.append(r)
        else:
            counts[reason] += 1
            dropped.append(DroppedRow(int(r["id"]), _label(r), reason, source))
    n_dates = len({str(r["recorded_at"])[:10] for r in keep})
    bound = "" if max_bits_per_byte is None else f" at <= {max_bits_per_byte:g} bits/byte"
    excluded = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"
    if len(keep) < 3:
        raise LocalTrendError(
            f"{len(keep)} usable run record(s) of {len(records)} in {source}{bound} (excluded: {excluded}); "
            "a doubling time needs at least 3 runs on different dates")
    if n_dates < 2:
        raise LocalTrendError(
            f"all {len(keep)} usable run records in {source} are on one date "
            f"({str(keep[0]['recorded_at'])[:10]}); a doubling time needs runs on different dates")
    dates = [parse_date(str(r["recorded_at"])[:10], file=source, row=f"#{r['id']}", field="recorded_at")
             for r in keep]
    pts = TrendPoints(
        label=np.array([_label(r) for r in keep], dtype=object),
        date=np.array([d.isoformat() for d in dates], dtype=object),
        year=np.array([decimal_year(d) for d in dates], float),
        value=np.array([float(value_of(r)) for r in keep], float),
        row=np.array([int(r["id"]) for r in keep], int),
        unit=unit, source=source, n_input=len(records), dropped=dropped)
    front = running_record_frontier(pts, higher_is_better=True)
    counts["not a best-so-far record"] = pts.n - front.n
    if front.n < 3:
        raise LocalTrendError(
            f"only {front.n} best-so-far record(s) among {len(keep)} usable runs on {n_dates} dates "
            f"in {source}; a doubling time needs at least 3 runs that each beat the earlier best")
    fit = fit_growth(front.year, front.value, ci=ci, n_boot=n_boot, seed=seed,
                     labels=list(front.label))
    figures: dict = {
        f"yours: {metric}": {"value": fit.factor_per_year, "ci": fit.factor_ci_ols, "unit": "x/year"},
    }
    for name, t in REFERENCE_TRENDS.items():
        figures[f"reference: {name}"] = {"value": t["factor_per_year"], "ci": t["ci90"],
                                         "unit": "x/year (90% CI)"}
    notes = [f"excluded records: {excluded}; {counts['not a best-so-far record']} usable record(s) "
             "were not a best-so-far record",
             *(f"reference {n}: {t['description']} -- {t['source']}" for n, t in REFERENCE_TRENDS.items())]
    unknown = sum(1 for r in keep if r.get("speed_disturbed") is None)
    if unknown:
        notes.append(f"{unknown} usable record(s) carry no disturbed flag (recorded before it existed)")
    return TrendResult(
        name="local", title=f"Your own Moore's law: best-so-far {metric} over your runs",
        fit=fit, points=front, background=pts, metric=metric, unit=unit, figures=figures,
        notes=notes, credit="", selection={"frontier": "running best", "metric": metric,
                                           "max_bits_per_byte": max_bits_per_byte,
                                           "excluded": dict(counts)})


def local_command(
    metric: str = typer.Option("tokens_per_usd", help="tokens_per_usd (1e6 / $ per 1M decoded tokens) "
                                                      "| decode_tokens_per_s."),
    max_bits_per_byte: Optional[float] = typer.Option(None, help="Use only runs at or below this "
                                                                 "bits per byte (same-quality progress)."),
    db: Optional[Path] = typer.Option(None, "--db", help="History database (default: $MOORELAB_HISTORY "
                                                         "or <cache>/history.sqlite)."),
    ci: float = typer.Option(0.90, help="Interval level."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="PNG path (default moorelab-out/trend_local.png)."),
    no_plot: bool = typer.Option(False, "--no-plot", help="Do not write a plot."),
) -> None:
    """Your own Moore's law: doubling time of your best-so-far performance per cost over your runs."""
    from moorelab.law.analysis import emit

    path = db if db is not None else history.default_path()
    res = local_trend(history.list_records(path), metric=metric, max_bits_per_byte=max_bits_per_byte,
                      ci=ci, n_boot=n_boot, seed=seed, source=str(path))
    emit(res, as_json=as_json, plot=None if no_plot else (plot or Path("moorelab-out") / "trend_local.png"))
