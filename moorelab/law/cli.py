"""``moorelab trend ...`` and ``moorelab data ...`` sub-commands.

Registry for analyses: other modules add theirs with ``@trend_app.command("name")`` on the
:data:`trend_app` defined here (import it from this module); the modules listed in
:data:`PLUGIN_MODULES` are imported at the end of this file so that their commands register
(a module that does not exist yet is skipped; an error inside it is not hidden).
:func:`register_analysis` also records a name -> function entry in :data:`ANALYSES` for
programmatic use (``ANALYSES["compute"](data_dir=...) -> TrendResult``).

Common options of every analysis: ``--data DIR`` (files laid out like shared/data/trends;
default: the fetch cache, see :func:`moorelab.law.data.default_data_dir`), ``--json`` (one JSON
object on stdout), ``--plot PATH`` (PNG; default ``moorelab-out/trend_<name>.png``),
``--no-plot``.
"""

from __future__ import annotations

import importlib
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer


trend_app = typer.Typer(help="Trend fits: doubling times with intervals, published numbers "
                             "reproduced (data: Epoch AI, CC-BY 4.0).", no_args_is_help=True)
data_app = typer.Typer(help="Public trend data: fetch into the cache, list sources.",
                       no_args_is_help=True)

#: name -> function returning a TrendResult (keyword arguments only)
ANALYSES: dict[str, Callable] = {}

PLUGIN_MODULES = ("moorelab.law.prices", "moorelab.law.chinchilla", "moorelab.law.efficiency")

DEFAULT_OUT = Path("moorelab-out")

# reusable typer options
DataOpt = typer.Option(None, "--data", help="Directory laid out like shared/data/trends "
                                            "(default: the fetch cache).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object on stdout.")
PlotOpt = typer.Option(None, "--plot", help="PNG path (default moorelab-out/trend_<name>.png).")
NoPlotOpt = typer.Option(False, "--no-plot", help="Do not write a plot.")


def register_analysis(name: str, fn: Callable) -> Callable:
    """Record ``fn`` (keyword args -> TrendResult) under ``name`` in :data:`ANALYSES`."""
    ANALYSES[name] = fn
    return fn


def plot_path(name: str, plot: Optional[Path], no_plot: bool) -> Optional[Path]:
    """Resolve the plot option: None when ``--no-plot``."""
    if no_plot:
        return None
    return plot if plot is not None else DEFAULT_OUT / f"trend_{name}.png"


def check_files(name: str, data: Optional[Path], plot: Optional[Path], no_plot: bool,
                **files: Optional[Path]) -> None:
    """Check a trend command's paths before any work: ``--data`` is a folder, the plot can be
    written (a real probe of its folder), each of ``files`` (option name -> path) is a file.

    Raises:
        MoorelabError: naming the option and the path.
    """
    from moorelab.paths import check_output_file, require_file, require_folder

    if data is not None:
        require_folder(data, "--data")
    for option, path in files.items():
        if path is not None:
            require_file(path, "--" + option.replace("_", "-"))
    target = plot_path(name, plot, no_plot)
    if target is not None:
        check_output_file(target, "--plot")


@contextmanager
def working(message: str) -> Iterator[None]:
    """A spinner with ``message`` on stderr while a long step runs, on a terminal only (a pipe,
    a log file or ``--json`` output sees nothing)."""
    from rich.console import Console

    con = Console(stderr=True)
    if not con.is_terminal:
        yield
        return
    with con.status(message):
        yield


def output(result, *, as_json: bool, plot: Optional[Path], no_plot: bool) -> None:
    """Emit a TrendResult the standard way (table or JSON, plus plot)."""
    from moorelab.law.analysis import emit

    emit(result, as_json=as_json, plot=plot_path(result.name, plot, no_plot))


# --------------------------------------------------------------------------- trend commands
@trend_app.command("compute")
def compute_cmd(
    data: Optional[Path] = DataOpt,
    start: str = typer.Option("2010-01-01", help="Window start (inclusive, YYYY-MM-DD)."),
    end: Optional[str] = typer.Option(None, help="Window end (exclusive, YYYY-MM-DD)."),
    frontier: str = typer.Option("none", help="none | record (running record setters) | top10."),
    ci: float = typer.Option(0.90, help="Interval level."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """Training compute of notable models since 2010 (Epoch AI: 4.7x/yr, 90% CI 4.3-5.2)."""
    check_files("compute", data, plot, no_plot)
    from moorelab.law.compute import run_compute

    with working(f"fitting the training-compute trend ({n_boot} bootstrap resamples)"):
        res = run_compute(data, start=start, end=end, frontier=frontier, ci=ci, n_boot=n_boot,
                          seed=seed)
    output(res, as_json=as_json, plot=plot, no_plot=no_plot)


@trend_app.command("hardware")
def hardware_cmd(
    data: Optional[Path] = DataOpt,
    start: str = typer.Option("2006-01-01", help="Window start (inclusive)."),
    end: str = typer.Option("2022-01-01", help="Window end (exclusive)."),
    ci: float = typer.Option(0.90, help="Interval level."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """FLOP/s per dollar of GPUs over release date -> doubling time (published 2.0-2.5 yr)."""
    check_files("hardware", data, plot, no_plot)
    from moorelab.law.hardware import run_hardware

    with working(f"fitting the hardware trend ({n_boot} bootstrap resamples)"):
        res = run_hardware(data, start=start, end=end, ci=ci, n_boot=n_boot, seed=seed)
    output(res, as_json=as_json, plot=plot, no_plot=no_plot)


@trend_app.command("months")
def months_cmd(
    gain: float = typer.Argument(..., help="Gain factor, e.g. 2.4 for '2.4x cheaper/better'."),
    trend: str = typer.Option("compute", help="compute | hardware | facts | algorithmic_efficiency | "
                                              "llm_price_at_fixed_capability | custom "
                                              "(custom: give --factor-per-year and --ci-lo/hi)."),
    factor_per_year: Optional[float] = typer.Option(None, help="custom trend: factor per year."),
    ci_lo: Optional[float] = typer.Option(None, help="custom trend: interval low (x/yr)."),
    ci_hi: Optional[float] = typer.Option(None, help="custom trend: interval high (x/yr)."),
    data: Optional[Path] = DataOpt,
    ci: float = typer.Option(0.90, help="Interval level (data trends)."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples (data trends)."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """Convert a gain factor into months of a chosen trend, with interval."""
    check_files("months", data, plot, no_plot)
    from moorelab.law.months import run_months

    with working(f"fitting the {trend} trend"):
        res = run_months(gain, trend=trend, data_dir=data, factor_per_year=factor_per_year,
                         ci_lo=ci_lo, ci_hi=ci_hi, ci=ci, n_boot=n_boot)
    output(res, as_json=as_json, plot=plot, no_plot=no_plot)


@trend_app.command("forecast")
def forecast_cmd(
    threshold: float = typer.Argument(..., help="Value to cross, in the metric's unit "
                                                "(e.g. 1e27 FLOP)."),
    trend: str = typer.Option("compute", help="compute | hardware | facts | csv."),
    frontier: str = typer.Option("record", help="compute: none | record | top10."),
    csv: Optional[Path] = typer.Option(None, help="trend=csv: CSV file with dated values."),
    date_col: str = typer.Option("date", help="trend=csv: date column (YYYY-MM-DD)."),
    value_col: str = typer.Option("value", help="trend=csv: value column (> 0)."),
    label_col: Optional[str] = typer.Option(None, help="trend=csv: label column."),
    data: Optional[Path] = DataOpt,
    ci: float = typer.Option(0.90, help="Prediction-interval level."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """When a trend crosses a threshold, with a prediction interval."""
    check_files("forecast", data, plot, no_plot, csv=csv)
    from moorelab.law.forecast import run_forecast

    with working(f"fitting the {trend} trend ({n_boot} bootstrap resamples)"):
        res = run_forecast(threshold, trend=trend, data_dir=data, frontier=frontier, csv=csv,
                           date_col=date_col, value_col=value_col, label_col=label_col, ci=ci,
                           n_boot=n_boot, seed=seed)
    output(res, as_json=as_json, plot=plot, no_plot=no_plot)


@trend_app.command("fit")
def fit_cmd(
    file: Path = typer.Argument(..., help="CSV (.csv) or JSON lines (.jsonl) of dated values."),
    date_col: str = typer.Option("date", help="Date column."),
    value_col: str = typer.Option("value", help="Value column (> 0; fitted on a log scale)."),
    label_col: Optional[str] = typer.Option(None, help="Label column (default: row numbers)."),
    date_format: str = typer.Option("%Y-%m-%d", help="strptime format of every date (strict)."),
    lower_is_better: bool = typer.Option(False, "--lower-is-better",
                                         help="e.g. prices: factor of decline per year, "
                                              "halving time, running minimum."),
    frontier: str = typer.Option("none", help="none | running-best | top-K (e.g. top-3)."),
    since: Optional[str] = typer.Option(None, help="Keep dates on/after (YYYY-MM-DD)."),
    until: Optional[str] = typer.Option(None, help="Keep dates before (YYYY-MM-DD, exclusive)."),
    unit: Optional[str] = typer.Option(None, help="Unit of the values, for labels."),
    ci: float = typer.Option(0.90, help="Interval level."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """Fit any dated series: factor per year, doubling/halving time, rows dropped and why."""
    from moorelab.law.trendfit import run_fit

    res = run_fit(file, date_col=date_col, value_col=value_col, label_col=label_col,
                  date_format=date_format, lower_is_better=lower_is_better, frontier=frontier,
                  since=since, until=until, ci=ci, n_boot=n_boot, seed=seed, unit=unit)
    output(res, as_json=as_json, plot=plot, no_plot=no_plot)


@trend_app.command("prices")
def prices_cmd(
    data: Optional[Path] = DataOpt,
    ci: float = typer.Option(0.90, help="Interval level."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """Cheapest LLM price reaching a fixed benchmark score (Epoch AI: 9x-900x cheaper/yr)."""
    check_files("prices", data, plot, no_plot)
    from moorelab.law.prices import emit_prices, run_prices

    with working("fitting the price declines"):
        res = run_prices(data, ci=ci)
    emit_prices(res, as_json=as_json, plot=plot_path("prices", plot, no_plot))


@trend_app.command("chinchilla")
def chinchilla_cmd(
    data: Optional[Path] = DataOpt,
    budget: float = typer.Option(1e21, help="Compute budget C = 6ND (FLOP)."),
    grid: str = typer.Option("full", help="Initialisation grid: full (4500) | coarse (243)."),
    n_boot: int = typer.Option(100, help="Bootstrap resamples for standard errors."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    exclude_fewest_tokens: int = typer.Option(5, help="Runs with the fewest tokens to exclude "
                                              "(5 as in Epoch's fit; 0 = all)."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """Chinchilla law L(N,D) fit and compute-optimal N, D (Epoch: E=1.82, alpha=.35, beta=.37)."""
    check_files("chinchilla", data, plot, no_plot)
    from moorelab.law.chinchilla import emit_chinchilla, run_chinchilla

    with working(f"fitting the Chinchilla law L(N, D) ({grid} grid of starts, then {n_boot} "
                 "bootstrap refits)"):
        res = run_chinchilla(data, budget_flop=budget, grid=grid, n_boot=n_boot, seed=seed,
                             exclude_fewest_tokens=exclude_fewest_tokens)
    emit_chinchilla(res, as_json=as_json, plot=plot_path("chinchilla", plot, no_plot))


@trend_app.command("efficiency")
def efficiency_cmd(
    data: Optional[Path] = DataOpt,
    snapshot: str = typer.Option("2025-11", help="ECI snapshot: 2025-11 | 2026-01."),
    ci: float = typer.Option(0.90, help="Interval level."),
    as_json: bool = JsonOpt, plot: Optional[Path] = PlotOpt, no_plot: bool = NoPlotOpt,
) -> None:
    """Algorithmic efficiency from the capabilities index (Epoch quick check: ~2.9x/yr)."""
    check_files("efficiency", data, plot, no_plot)
    from moorelab.law.efficiency import emit_efficiency, run_efficiency

    with working("fitting the capabilities index"):
        res = run_efficiency(data, snapshot=snapshot, level=ci)
    emit_efficiency(res, as_json=as_json, plot=plot_path("efficiency", plot, no_plot))


def _lazy(modname: str, fn: str) -> Callable:
    def call(**kw):
        return getattr(importlib.import_module(modname), fn)(**kw)

    call.__name__ = fn
    return call


register_analysis("compute", _lazy("moorelab.law.compute", "run_compute"))
register_analysis("hardware", _lazy("moorelab.law.hardware", "run_hardware"))
register_analysis("months", _lazy("moorelab.law.months", "run_months"))
register_analysis("forecast", _lazy("moorelab.law.forecast", "run_forecast"))
register_analysis("prices", _lazy("moorelab.law.prices", "run_prices"))
register_analysis("chinchilla", _lazy("moorelab.law.chinchilla", "run_chinchilla"))
register_analysis("efficiency", _lazy("moorelab.law.efficiency", "run_efficiency"))
register_analysis("fit", _lazy("moorelab.law.trendfit", "run_fit"))


# --------------------------------------------------------------------------- data commands
@data_app.command("fetch")
def fetch_cmd(
    name: str = typer.Argument(..., help="Dataset name (see `moorelab data list`) or 'all'."),
    from_path: Optional[Path] = typer.Option(None, "--from", help="Local copy to read instead "
                                             "of downloading (dir like shared/data/trends)."),
    base_url: Optional[str] = typer.Option(None, help="Mirror replacing "
                                           "https://raw.githubusercontent.com."),
    force: bool = typer.Option(False, "--force", help="Re-fetch even if cached."),
    as_json: bool = JsonOpt,
) -> None:
    """Download a public data set (pinned commit) into the cache; sha256 recorded."""
    from moorelab.law.fetch import fetch_dataset, results_to_dicts
    from moorelab.law.sources import RAW_BASE

    with working(f"fetching {name}"):
        res = fetch_dataset(name, from_path=from_path, base_url=base_url or RAW_BASE, force=force)
    if as_json:
        sys.stdout.write(json.dumps({"dataset": name, "files": results_to_dicts(res)}) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"moorelab data fetch {name}")
    for c in ("file", "status", "bytes", "sha256", "matches reference"):
        t.add_column(c, overflow="fold")
    for r in res:
        t.add_row(r.relpath, r.status, str(r.bytes), r.sha256[:16] + "…",
                  {True: "yes", False: "NO", None: "-"}[r.matches_reference])
    con = Console()
    con.print(t)
    if res:
        con.print(f"cache: {Path(res[0].path).parents[1]}  (manifest: MANIFEST.json)")
    if res and all(r.status == "cached" for r in res):
        con.print(f"cached: all {len(res)} file(s) already in the cache, sha256 verified; nothing downloaded or copied "
                  "(--force fetches again)")
    if any(r.matches_reference is False for r in res):
        con.print("[yellow]warning: some files differ from the reference sha256 "
                  "(upstream changed or a different copy was given)[/yellow]")


@data_app.command("list")
def list_cmd(as_json: bool = JsonOpt) -> None:
    """List the data sets `moorelab data fetch` knows, with their public sources."""
    from moorelab.law.sources import DATASETS, dataset_files

    rows = [{"name": n, "description": d, "files": [f.url() for f in dataset_files(n)]}
            for n, (d, _) in DATASETS.items()]
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title="public trend data sets (Epoch AI, CC-BY 4.0 unless noted)")
    for c in ("name", "files", "description"):
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(r["name"], str(len(r["files"])), r["description"])
    Console().print(t)


# --------------------------------------------------------------------------- plugins
for _mod in PLUGIN_MODULES:
    try:
        importlib.import_module(_mod)
    except ModuleNotFoundError as _exc:  # not written yet: skip; anything else surfaces
        if _exc.name != _mod:
            raise
