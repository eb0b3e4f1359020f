"""``moorelab trend hardware``: FLOP/s per dollar of GPUs over release date -> doubling time.

Main selection: rows of Epoch AI's chip dataset (``Chip_dataset-Grid_view.csv``) with
``Type == GPU``, a nominal ``Release price (USD)`` > 0 and FP32 performance > 0, released in
[2006-01-01, 2022-01-01) -- the window of Hobbhahn & Besiroglu (2022). Metric: FP32 FLOP/s per
launch-price dollar; OLS of log10 on decimal years.

Published anchors (for comparison, not reproduced exactly by the held data -- see notes):
Hobbhahn & Besiroglu 2022 "Trends in GPU price-performance" (Epoch AI): doubling every
2.46 years [2.24, 2.72] (470 GPUs 2006-2021), 2.07 [1.54, 3.13] for ML GPUs (n = 26);
Hobbhahn, Heim & Aydos 2023 "Trends in machine learning hardware": price-performance doubles
every ~2.1 years. Data: Epoch AI (CC-BY 4.0).
"""

from __future__ import annotations

import math
import os

import numpy as np

from moorelab.law.analysis import Published, TrendResult, Variant, within
from moorelab.law.data import LoadedTable, TrendPoints, load_chips, points_from_frame
from moorelab.law.fit import fit_growth
from moorelab.law.frontier import running_record_frontier, window

FP32 = "FP32 (single precision) performance (FLOP/s)"
TENSOR16 = "Tensor-FP16/BF16 performance (FLOP/s)"
PRICE = "Release price (USD)"
HB2022 = "Hobbhahn & Besiroglu 2022, 'Trends in GPU price-performance', Epoch AI"
HHA2023 = "Hobbhahn, Heim & Aydos 2023, 'Trends in machine learning hardware', Epoch AI"
#: assumed US consumer-price inflation for the real-terms sensitivity line (per year)
ASSUMED_INFLATION = 0.025


def price_performance_points(table: LoadedTable, *, perf_col: str = FP32,
                             gpu_only: bool = True, ml_only: bool = False) -> TrendPoints:
    """FLOP/s per (nominal launch) dollar for each chip, every row accounted for.

    Drops with reasons: not a GPU (``gpu_only``), not ML hardware (``ml_only``), price
    missing/<= 0, performance missing/<= 0 (plus the load-time drops of the table).
    """
    f = table.frame.copy()
    reasons = np.full(len(f), "", dtype=object)
    if gpu_only:
        reasons[(f["Type"] != "GPU").to_numpy()] = "not a GPU (Type column)"
    if ml_only:
        m = (f["ML hardware"] != "checked").to_numpy() & (reasons == "")
        reasons[m] = "not ML hardware (ML hardware column not checked)"
    price = f[PRICE].to_numpy(float)
    perf = f[perf_col].to_numpy(float)
    m = (reasons == "") & ~(price > 0)
    reasons[m] = "release price missing or <= 0"
    m = (reasons == "") & ~(perf > 0)
    reasons[m] = f"{perf_col} missing or <= 0"
    with np.errstate(invalid="ignore", divide="ignore"):
        f["_value"] = perf / price
    dropped = list(table.dropped)
    from moorelab.law.data import DroppedRow

    for i in np.flatnonzero(reasons != ""):
        dropped.append(DroppedRow(int(f["row"].iat[i]), str(f["Hardware name"].iat[i]),
                                  str(reasons[i]), str(f["file"].iat[i])))
    keep = f[reasons == ""]
    unit = "FLOP/s per $" + (" (FP32)" if perf_col == FP32 else " (tensor FP16/BF16)")
    pts = points_from_frame(keep, label_col="Hardware name", date_col="date",
                            value_col="_value", unit=unit, file=", ".join(table.files),
                            value_name="FLOP/s per $", dropped=dropped)
    pts.n_input = table.n_input
    return pts


def run_hardware(data_dir: str | os.PathLike | None = None, *, start: str = "2006-01-01",
                 end: str = "2022-01-01", ci: float = 0.90, n_boot: int = 2000,
                 seed: int = 0) -> TrendResult:
    """The ``hardware`` analysis (see module doc). Returns a :class:`TrendResult`; its main fit
    is the GPU FP32 price-performance doubling time, shown beside the published 2.0-2.5 years.
    """
    table = load_chips(data_dir)
    allgpu = price_performance_points(table)
    pts = window(allgpu, start, end)
    fit = fit_growth(pts.year, pts.value, ci=ci, n_boot=n_boot, seed=seed,
                     labels=list(pts.label))
    res = TrendResult(
        name="hardware",
        title=f"GPU price-performance (FP32 FLOP/s per launch $), {start} to {end}",
        fit=fit, points=pts, metric="FP32 FLOP/s per $", unit="FLOP/s per $",
        selection={"start": start, "end": end, "type": "GPU", "price": "nominal launch price",
                   "ci": ci, "n_boot": n_boot, "seed": seed})
    # variants
    all_fit = fit_growth(allgpu.year, allgpu.value, ci=ci, n_boot=0)
    res.variants.append(Variant("all GPUs with a launch price, any date", all_fit,
                                f"{allgpu.year.min():.0f}-{allgpu.year.max():.0f}"))
    ml = window(price_performance_points(table, gpu_only=False, ml_only=True), "2006-01-01",
                None)
    ml_fit = fit_growth(ml.year, ml.value, ci=ci, n_boot=0)
    res.variants.append(Variant("ML hardware (any type) with a launch price, FP32", ml_fit,
                                "'ML hardware' column checked"))
    rec = running_record_frontier(pts)
    rec_fit = fit_growth(rec.year, rec.value, ci=ci, n_boot=0)
    res.variants.append(Variant("running records of GPU FP32 FLOP/s per $ (frontier)", rec_fit,
                                f"{start} to {end}"))
    real_factor = fit.factor_per_year * (1 + ASSUMED_INFLATION)
    real_time = math.log(2) / math.log(real_factor)
    res.figures["doubling time in real (inflation-adjusted) dollars, sensitivity"] = {
        "value": real_time, "unit": "years",
        "assumption": f"{ASSUMED_INFLATION:.1%}/yr consumer-price inflation (not from the data)"}
    ours_t = fit.doubling_time_years
    ours_ci = fit.doubling_time_ci_ols
    res.published.append(Published(
        figure="GPU FLOP/s per $ doubling time", published=2.46, published_ci=(2.24, 2.72),
        unit="years", ours=ours_t, ours_ci=ours_ci, source=HB2022,
        tolerance="ours within the published 90% CI",
        agrees=within(ours_t, (2.24, 2.72)),
        note=(f"held data differ: {pts.n} GPUs with a nominal launch price in the window vs "
              "470 GPUs in the study (prices from more sources); prices here are nominal "
              f"(real terms at an assumed {ASSUMED_INFLATION:.1%}/yr inflation: "
              f"{real_time:.2f} yr); the held table is weighted to consumer GPUs, whose "
              "price-performance improved more slowly. All held GPUs (any date, n = "
              f"{all_fit.n}): {all_fit.doubling_time_years:.2f} yr; running records: "
              f"{rec_fit.doubling_time_years:.2f} yr.")))
    res.published.append(Published(
        figure="ML GPU FLOP/s per $ doubling time", published=2.07, published_ci=(1.54, 3.13),
        unit="years", ours=ml_fit.doubling_time_years, ours_ci=ml_fit.doubling_time_ci_ols,
        source=HB2022, tolerance="ours within the published 90% CI",
        agrees=within(ml_fit.doubling_time_years, (1.54, 3.13)),
        note=f"ML hardware with a launch price in the held table: n = {ml_fit.n} (study: 26)"))
    res.published.append(Published(
        figure="ML hardware price-performance doubling time", published=2.1, published_ci=None,
        unit="years", ours=ml_fit.doubling_time_years, ours_ci=ml_fit.doubling_time_ci_ols,
        source=HHA2023, tolerance="published value inside our 90% CI",
        agrees=within(2.1, ml_fit.doubling_time_ci_ols)))
    res.notes.append("Price-performance = FP32 FLOP/s / nominal launch price; OLS on log10.")
    return res
