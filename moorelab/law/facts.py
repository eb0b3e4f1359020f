"""Embedded facts: notable language models 2017-2024, for offline use by ``moorelab run``.

``moorelab/law/facts/notable_language_models.csv`` is hand-written from the papers and model
cards it cites (column ``source``); ``compute_basis`` says where each training-compute figure
comes from: the paper's own FLOP count, 6*N*D from the paper's parameter and token counts, or
Epoch AI's estimate where the developer published none (credit: Epoch AI, CC-BY 4.0). The test
``tests/law/test_facts.py`` cross-checks every row against Epoch AI's notable-models table
(publication dates within 31 days; parameters and compute within 10%).

Columns: model, organization, publication_date (YYYY-MM-DD), parameters (count, may be empty
when undisclosed), training_compute_flop (FLOP, may be empty), compute_basis, source (URL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from moorelab.errors import DataError
from moorelab.law.data import DroppedRow, read_table, to_number
from moorelab.law.dates import decimal_year, parse_date
from moorelab.law.fit import GrowthFit, fit_growth

FACTS_PATH = Path(__file__).resolve().parent / "facts" / "notable_language_models.csv"
FACTS_COLUMNS = ("model", "organization", "publication_date", "parameters",
                 "training_compute_flop", "compute_basis", "source")
#: columns a user-supplied facts file must have (``compute_basis`` is optional there)
REQUIRED_COLUMNS = tuple(c for c in FACTS_COLUMNS if c != "compute_basis")


def load_facts(path: str | Path | None = None) -> tuple[pd.DataFrame, list[DroppedRow]]:
    """Load and check the embedded notable-models table.

    Args:
        path: CSV to read (default: the embedded :data:`FACTS_PATH`).

    Returns:
        (frame, dropped): frame with the columns of :data:`FACTS_COLUMNS` plus ``year``
        (decimal year, float) and ``row`` (spreadsheet row, header = 1); ``parameters`` and
        ``training_compute_flop`` as float (NaN where undisclosed). ``dropped`` lists rows not
        kept, each with its reason (non-positive or non-numeric parameters/compute, duplicate
        model name, missing source).

    Raises:
        DataError: file missing, a column of :data:`REQUIRED_COLUMNS` missing, or an
            unparseable date (names file and row).
    """
    p = Path(path) if path is not None else FACTS_PATH
    df = read_table(p, required=REQUIRED_COLUMNS)
    if "compute_basis" not in df.columns:
        df["compute_basis"] = ""
    dropped: list[DroppedRow] = []
    keep_rows = []
    seen: dict[str, int] = {}
    out = {c: [] for c in FACTS_COLUMNS}
    out["year"], out["row"] = [], []
    for r in df.index:
        model = str(df.at[r, "model"]).strip() if pd.notna(df.at[r, "model"]) else ""
        if not model:
            dropped.append(DroppedRow(int(r), f"<row {r}>", "model name missing", str(p)))
            continue
        d = parse_date(df.at[r, "publication_date"], file=str(p), row=r,
                       field="publication_date")
        nums = {}
        bad = None
        for col in ("parameters", "training_compute_flop"):
            try:
                v = to_number(df.at[r, col])
            except ValueError:
                bad = f"{col} not a number ({df.at[r, col]!r})"
                break
            if not np.isnan(v) and (not np.isfinite(v) or v <= 0):
                bad = f"{col} <= 0 or infinite ({v})"
                break
            nums[col] = v
        if bad:
            dropped.append(DroppedRow(int(r), model, bad, str(p)))
            continue
        src = df.at[r, "source"]
        if pd.isna(src) or not str(src).strip():
            dropped.append(DroppedRow(int(r), model, "source missing (every fact must cite one)",
                                      str(p)))
            continue
        if model in seen:
            dropped.append(DroppedRow(int(r), model, f"duplicate of row {seen[model]}", str(p)))
            continue
        seen[model] = int(r)
        for c in FACTS_COLUMNS:
            out[c].append(df.at[r, c])
        out["publication_date"][-1] = d.isoformat()
        out["parameters"][-1] = nums["parameters"]
        out["training_compute_flop"][-1] = nums["training_compute_flop"]
        out["year"].append(decimal_year(d))
        out["row"].append(int(r))
        keep_rows.append(r)
    frame = pd.DataFrame(out)
    frame["parameters"] = frame["parameters"].astype(float)
    frame["training_compute_flop"] = frame["training_compute_flop"].astype(float)
    return frame, dropped


def fit_facts_compute_trend(df: pd.DataFrame, *, ci: float = 0.90, n_boot: int = 2000,
                            seed: int = 0) -> GrowthFit:
    """Growth of training compute (FLOP) over publication date for the facts table.

    Rows without a compute figure are left out (pass ``load_facts()[0]``; the rows used are in
    ``GrowthFit.labels``). Same method as :func:`moorelab.law.fit.fit_growth`.

    Raises:
        DataError: fewer than 3 rows with compute.
    """
    have = df["training_compute_flop"].notna()
    sub = df[have]
    if len(sub) < 3:
        raise DataError(f"facts table: {len(sub)} row(s) with training compute; need >= 3")
    return fit_growth(sub["year"].to_numpy(float), sub["training_compute_flop"].to_numpy(float),
                      ci=ci, n_boot=n_boot, seed=seed, labels=list(sub["model"]))


#: the compute trend fit needs at least this many rows with a training-compute figure
MIN_FIT_ROWS = 3


def facts_for_fit(path: str | Path | None = None,
                  report: Callable[[list[DroppedRow]], None] | None = None,
                  ) -> tuple[pd.DataFrame, list[DroppedRow]]:
    """Load a facts table and account for every row the compute fit will not use.

    Cheap (no fit): ``moorelab run`` calls it before loading the model.

    Args:
        path: CSV to read (default: the embedded table).
        report: called with the rows left out (possibly none) before the count is checked, so
            that they are shown even when the check fails.

    Returns:
        (frame, left_out): frame as :func:`load_facts`; ``left_out`` is every dropped row plus
        every kept row without a training-compute figure (which the fit leaves out), each with
        its reason.

    Raises:
        DataError: what :func:`load_facts` raises, or fewer than :data:`MIN_FIT_ROWS` rows with
            training compute (naming the file and the counts).
    """
    p = Path(path) if path is not None else FACTS_PATH
    df, dropped = load_facts(p)
    no_compute = df[df["training_compute_flop"].isna()]
    left_out = list(dropped) + [
        DroppedRow(int(r.row), str(r.model), "training compute missing (not in the fit)", str(p))
        for r in no_compute.itertuples()]
    left_out.sort(key=lambda d: d.row)
    if report is not None:
        report(left_out)
    usable = len(df) - len(no_compute)
    if usable < MIN_FIT_ROWS:
        raise DataError(
            f"{p}: {usable} usable row(s) with training compute of {len(df) + len(dropped)} read "
            f"({len(left_out)} left out); the trend fit needs at least {MIN_FIT_ROWS}")
    return df, left_out
