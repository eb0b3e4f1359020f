"""``moorelab trend compute``: growth of training compute of notable models since 2010.

Reproduces Epoch AI's data insight "compute-trend-post-2010" (June 2024): training compute of
notable models grows **4.7x/year (90% CI 4.3-5.2), n = 428**. Selection (as Epoch): rows of the
AI-models table with ``Notability criteria`` set, ``Publication date`` on/after 2010-01-01 and
``Training compute (FLOP)`` > 0; OLS of log10(compute) on decimal years.

Also shown: notable language models since 2017-06 (Epoch: "as fast as 9x/yr") and the window
cut at 2024-06-01 (Sevilla & Roldan, May 2024: 4.1x/yr, 90% CI 3.7-4.6, on a different
selection). Data: Epoch AI (CC-BY 4.0).
"""

from __future__ import annotations

import os

import numpy as np

from moorelab.errors import DataError
from moorelab.law.analysis import Published, TrendResult, Variant, within
from moorelab.law.data import LoadedTable, TrendPoints, load_notable_models, table_points
from moorelab.law.fit import fit_growth
from moorelab.law.frontier import running_record_frontier, top_k_frontier, window

COMPUTE = "Training compute (FLOP)"
PUBLISHED_FACTOR = 4.7
PUBLISHED_CI = (4.3, 5.2)
PUBLISHED_N = 428
PUBLISHED_SOURCE = "Epoch AI data insight compute-trend-post-2010 (Jun 2024)"


def compute_points(table: LoadedTable, *, start: str | None = "2010-01-01",
                   end: str | None = None, notable_only: bool = True,
                   domain: str | None = None, frontier: str = "none") -> tuple[TrendPoints,
                                                                                TrendPoints]:
    """Select training-compute points from the AI-models table, every row accounted for.

    Args:
        table: :func:`moorelab.law.data.load_notable_models` output.
        start, end: window, ``start <= date < end`` (ISO dates; None = open).
        notable_only: keep rows with ``Notability criteria`` set (Epoch's notable models).
        domain: keep rows whose ``Domain`` contains this word (e.g. "Language"), if given.
        frontier: "none", "record" (running record setters) or "top10" (top 10 at release).

    Returns:
        (selected, candidates): the points to fit and the candidates before the frontier rule
        (for plotting). Reasons for drops, in order of checking: load-time drops (date
        missing), compute missing/<= 0, not notable, domain, window, frontier.
    """
    f = table.frame
    reasons = np.full(len(f), "", dtype=object)
    if notable_only:
        reasons[(f["Notability criteria"].isna()).to_numpy() & (reasons == "")] = \
            "not a notable model (Notability criteria empty)"
    if domain:
        dom = ~f["Domain"].fillna("").str.contains(domain, case=False, regex=False).to_numpy()
        reasons[dom & (reasons == "")] = f"domain does not include {domain!r}"
    pts = table_points(table, value_col=COMPUTE, label_col="Model", unit="FLOP",
                       value_name="training compute", dedupe=True)
    # map reasons onto points by source row
    by_row = dict(zip(f["row"].to_numpy(), reasons))
    r = np.array([by_row.get(int(x), "") for x in pts.row], dtype=object)
    pts = pts.subset(r == "", list(r))
    if start is not None or end is not None:
        pts = window(pts, start, end)
    candidates = pts
    if frontier == "record":
        pts = running_record_frontier(pts)
    elif frontier == "top10":
        pts = top_k_frontier(pts, 10)
    elif frontier != "none":
        raise DataError(f"frontier must be none, record or top10, not {frontier!r}")
    return pts, candidates


def run_compute(data_dir: str | os.PathLike | None = None, *, start: str = "2010-01-01",
                end: str | None = None, frontier: str = "none", ci: float = 0.90,
                n_boot: int = 2000, seed: int = 0, snapshot: str = "2025-08") -> TrendResult:
    """The ``compute`` analysis (see module doc). Returns a :class:`TrendResult` whose main fit
    is compared with Epoch AI's published 4.7x/yr (90% CI 4.3-5.2), n = 428.

    Raises:
        DataError: data file missing or malformed; fewer than 3 points selected.
    """
    table = load_notable_models(data_dir, snapshot=snapshot)
    pts, cand = compute_points(table, start=start, end=end, frontier=frontier)
    fit = fit_growth(pts.year, pts.value, ci=ci, n_boot=n_boot, seed=seed,
                     labels=list(pts.label))
    res = TrendResult(
        name="compute",
        title=f"Training compute of notable models since {start}"
              + (f" until {end}" if end else "")
              + ("" if frontier == "none" else f", frontier = {frontier}"),
        fit=fit, points=pts, background=cand if frontier != "none" else None,
        metric="training compute", unit="FLOP",
        selection={"start": start, "end": end, "frontier": frontier, "notable_only": True,
                   "snapshot": snapshot, "ci": ci, "n_boot": n_boot, "seed": seed})
    default = (start == "2010-01-01" and end is None and frontier == "none" and ci == 0.90)
    if default:
        res.published.append(Published(
            figure="training compute growth", published=PUBLISHED_FACTOR,
            published_ci=PUBLISHED_CI, unit="x/year", ours=fit.factor_per_year,
            ours_ci=fit.factor_ci_ols, source=PUBLISHED_SOURCE,
            tolerance="ours within the published 90% CI and rounds to 4.7",
            agrees=within(fit.factor_per_year, PUBLISHED_CI)
            and round(fit.factor_per_year, 1) == PUBLISHED_FACTOR,
            note=("published n = 428; ours n = %d (Aug 2025 snapshot; the filter is Epoch's). "
                  "Epoch's insight was computed on the June 2024 database; later rows "
                  "(2024-2025 models) are included here." % fit.n)))
        res.published.append(Published(
            figure="observations", published=PUBLISHED_N, published_ci=None, unit="models",
            ours=fit.n, ours_ci=None, source=PUBLISHED_SOURCE, tolerance="equal",
            agrees=fit.n == PUBLISHED_N))
        # variants beside the headline
        lm, _ = compute_points(table, start="2017-06-01", domain="Language")
        lm_fit = fit_growth(lm.year, lm.value, ci=ci, n_boot=0)
        res.variants.append(Variant("notable language models since 2017-06", lm_fit,
                                    "Domain contains 'Language'"))
        res.published.append(Published(
            figure="language-model compute growth since 2017-06", published=9.0,
            published_ci=None, unit="x/year", ours=lm_fit.factor_per_year,
            ours_ci=lm_fit.factor_ci_ols,
            source="Sevilla & Roldan, Epoch AI (May 2024)",
            tolerance="published 9x inside our 90% CI", agrees=within(9.0, lm_fit.factor_ci_ols),
            note="published as a rounded headline ('as fast as 9x/year') without interval"))
        cut, _ = compute_points(table, start="2010-01-01", end="2024-06-01")
        cut_fit = fit_growth(cut.year, cut.value, ci=ci, n_boot=0)
        res.variants.append(Variant("notable models 2010-01 to 2024-06", cut_fit,
                                    "same filter, window cut at 2024-06-01"))
        res.published.append(Published(
            figure="compute growth 2010 to May 2024", published=4.1, published_ci=(3.7, 4.6),
            unit="x/year", ours=cut_fit.factor_per_year, ours_ci=cut_fit.factor_ci_ols,
            source="Sevilla & Roldan, Epoch AI (May 2024)",
            tolerance="ours within the published 90% CI",
            agrees=within(cut_fit.factor_per_year, (3.7, 4.6)),
            note="their figure used a different selection of notable models; same filter "
                 "cut at 2024-06-01 here"))
        rec, _ = compute_points(table, start="2010-01-01", frontier="record")
        res.variants.append(Variant("running compute records since 2010",
                                    fit_growth(rec.year, rec.value, ci=ci, n_boot=0),
                                    "frontier: strictly above every earlier model"))
    res.notes.append("Fit: OLS of log10(training compute) on decimal years; bootstrap: pairs "
                     "resampling, percentile interval.")
    return res
