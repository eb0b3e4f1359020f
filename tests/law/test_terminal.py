"""`moorelab trend` on an 80-column terminal or a pipe: nothing cut, every figure present; rows
dropped named on the terminal; a spinner on a terminal only."""

from __future__ import annotations

import io
import math
import re

from rich.console import Console

from moorelab.law.analysis import LIST_DROPPED_ROWS, _fmt, print_dropped, render
from moorelab.law.data import DroppedRow


def at_80(renderable=None, fn=None) -> str:
    """Text of ``renderable`` (or of ``fn(console)``) printed at 80 columns into a file."""
    con = Console(width=80, file=io.StringIO())
    assert not con.is_terminal
    con.print(renderable) if fn is None else fn(con)
    return con.file.getvalue()


def assert_uncut(out: str, *values: str) -> None:
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    words = set(re.split(r"[\s│┃]+", out))
    missing = [v for v in values if v not in words and v not in out]
    assert not missing, (missing, out)


def fit_values(fit) -> list[str]:
    return [_fmt(fit.factor_per_year), _fmt(fit.factor_ci_ols[0]), _fmt(fit.factor_ci_ols[1]),
            _fmt(fit.factor_ci_boot[0]), _fmt(fit.factor_ci_boot[1]), _fmt(fit.doubling_time_months),
            _fmt(fit.slope_log10_per_year, 4), str(fit.n)]


def test_compute_hardware_months_forecast_tables_fit_80_columns(trends_dir):
    from moorelab.law.compute import run_compute
    from moorelab.law.forecast import run_forecast
    from moorelab.law.hardware import run_hardware
    from moorelab.law.months import run_months

    for res in (run_compute(trends_dir, n_boot=200), run_hardware(trends_dir, n_boot=200),
                run_months(2.4, trend="compute", data_dir=trends_dir, n_boot=200),
                run_forecast(1e27, trend="compute", data_dir=trends_dir, n_boot=200)):
        out = at_80(fn=lambda con: render(res, con))
        values = fit_values(res.fit)
        for p in res.published:
            values += [_fmt(p.published), _fmt(p.ours)]
        for v in res.variants:
            values += [str(v.fit.n), _fmt(v.fit.factor_per_year), _fmt(v.fit.doubling_time_years)]
        for k, fig in res.figures.items():
            if isinstance(fig, dict) and isinstance(fig.get("value"), (int, float)):
                values.append(_fmt(fig["value"]))
        assert_uncut(out, *values)
        assert f"{res.points.n_input} read, {res.points.n} used, {len(res.points.dropped)} dropped" in out


def test_prices_table_fits_80_columns(trends_dir):
    from moorelab.law.prices import prices_table, run_prices

    res = run_prices(trends_dir)
    out = at_80(prices_table(res))
    values = []
    for f in res.fits:
        lo, hi = f.fit.factor_ci_ols
        values += [f.threshold_model, f"{f.factor_per_year:.3g}", f"{lo:.3g}", f"{hi:.3g}", f.points[0].date,
                   f.points[-1].date, f"{f.fit.r_squared:.2f}", f"{f.lower:g},"]
        values += f.benchmark.split()
    assert_uncut(out, *values)


def test_efficiency_table_fits_80_columns(trends_dir):
    from moorelab.law.efficiency import efficiency_table, run_efficiency

    res = run_efficiency(trends_dir)
    out = at_80(efficiency_table(res))
    values = []
    for f in (res.all_models, res.frontier):
        values += [str(f.n), f"{f.stage2.slope:.2f}", f"{f.gain_per_year:.3g}", f"{f.ci_fixed_k[0]:.3g}",
                   f"{f.ci_fixed_k[1]:.3g}", f"{f.ci_with_k[0]:.3g}", f"{f.ci_with_k[1]:.3g}",
                   f"{f.doubling_time_months:.1f}"]
    assert_uncut(out, *values, "capability", "frontier")


def test_chinchilla_table_fits_80_columns(trends_dir):
    from moorelab.law.chinchilla import PARAMS, chinchilla_table, run_chinchilla

    res = run_chinchilla(trends_dir, grid="coarse", n_boot=5)
    out = at_80(chinchilla_table(res))
    f = res.fit
    values = []
    for k in PARAMS:
        fmt = "{:.4g}" if k in ("E", "alpha", "beta") else "{:.1f}"
        values += [k, fmt.format(f.params[k])]
    o = res.optimal
    values += [f"{o.n_params:.3g}", f"{o.n_tokens:.3g}", f"{o.tokens_per_param:.1f}", f"{o.loss:.3f}"]
    assert_uncut(out, *values)


def test_dropped_rows_are_named_one_by_one_or_grouped_with_their_first_rows():
    few = [DroppedRow(7, "GPT-2", "training compute missing", "a.csv"),
           DroppedRow(9, "T5", "before window start 2010-01-01", "a.csv")]
    out = at_80(fn=lambda con: print_dropped(con, few))
    assert out.splitlines() == ["  dropped row 7 (GPT-2): training compute missing",
                                "  dropped row 9 (T5): before window start 2010-01-01"]
    many = [DroppedRow(r, f"m{r}", "training compute missing", "a.csv") for r in range(2, 2 + LIST_DROPPED_ROWS)]
    many += [DroppedRow(100, "x", "duplicate of row 3 (same name)", "b.csv")]
    out = at_80(fn=lambda con: print_dropped(con, many))
    assert "…" not in out
    assert re.search(r"training compute missing\s+│\s+20\s+│ a.csv row 2, a.csv row 3,", out), out
    assert "and 16 more" in out and "duplicate of row N" in out and "b.csv row 100" in out
    assert at_80(fn=lambda con: print_dropped(con, [])) == ""


def test_spinner_only_on_a_terminal(monkeypatch):
    import rich.console

    from moorelab.law import cli

    shown = []

    class Recording(rich.console.Console):
        def status(self, message, **kw):
            shown.append(message)
            return super().status(message, **kw)

    monkeypatch.setattr(rich.console, "Console", lambda **kw: Recording(file=io.StringIO(), **kw))
    with cli.working("fitting"):
        pass
    assert shown == []  # not a terminal: nothing shown
    monkeypatch.setattr(rich.console, "Console",
                        lambda **kw: Recording(file=io.StringIO(), force_terminal=True, **kw))
    with cli.working("fitting the Chinchilla law"):
        x = math.sqrt(4)
    assert shown == ["fitting the Chinchilla law"] and x == 2
