"""Chinchilla scaling law L(N, D) = E + A / N**alpha + B / D**beta, and compute-optimal N, D.

Method: Hoffmann et al. (2022) "Approach 3", as replicated by Besiroglu, Erdil, Barnett & You
(Epoch AI, 2024, "Chinchilla Scaling: A replication attempt", arXiv 2404.10102; data
github.com/epoch-research/analyzing-chinchilla, credit "Epoch AI"):

* parametrisation ``A = exp(a)``, ``B = exp(b)``, ``E = exp(e)`` and the log-sum-exp form
  ``log L_hat = LSE(a - alpha log N, b - beta log D, e)``;
* objective: sum over runs of Huber(log L_hat - log L) with ``delta = 1e-3``;
* optimiser: L-BFGS-B (scipy) from every point of a grid of initialisations, keeping the best;
  the analytic gradient is used. The "full" grid is the paper's:
  alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}
  (4 500 starts); "coarse" (243 starts: alpha, beta in {0, 0.5, 1}, e in {-1, 0, 1},
  a, b in {0, 10, 20}) is for tests and reaches the same optimum on the published data;
* tokens ``D = FLOP / (6 N)``;
* standard errors: pairs bootstrap over runs (each resample refitted by L-BFGS-B started at
  the full-sample optimum), reported as the standard deviation of each parameter.

Data selection: by default the 5 runs with the fewest training tokens (D < 8.2e8; the
extreme over-parameterised end of the smallest iso-FLOP curve, losses 3.4-5.0) are excluded
and listed as dropped. With them excluded the fit reproduces Epoch's "replicate exactly"
numbers (E = 1.817, A = 477.8, B = 2143.9, alpha = 0.3473, beta = 0.3672) and lies within one
published standard error of Epoch's headline fit (E = 1.82, A = 482, B = 2085, alpha = 0.348,
beta = 0.366). With all 245 runs the optimum moves to E ~ 1.89, B ~ 1.3e4, beta ~ 0.45
(``exclude_fewest_tokens=0``).

Compute-optimal allocation under ``C = 6 N D`` (minimise L on the iso-FLOP curve):
``N_opt = G (C/6)**(beta/(alpha+beta))``, ``D_opt = G**-1 (C/6)**(alpha/(alpha+beta))``,
``G = (alpha A / (beta B))**(1/(alpha+beta))``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from moorelab.errors import DataError
from moorelab.law.data import CHINCHILLA, EPOCH_CREDIT, DroppedRow, data_file, read_table, to_number

HUBER_DELTA = 1e-3
PARAMS = ("E", "A", "B", "alpha", "beta")
CREDIT = (EPOCH_CREDIT + "; data digitised from Hoffmann et al. 2022 Fig. 4 by Epoch AI "
          "(Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt')")
PUBLISHED_EPOCH = {"E": 1.817, "A": 482.0, "B": 2085.4, "alpha": 0.3478, "beta": 0.3659}
PUBLISHED_EPOCH_SE = {"E": 0.026, "A": 124.5, "B": 1293.3, "alpha": 0.0154, "beta": 0.0206}
PUBLISHED_REPLICATE_EXACTLY = {"E": 1.817, "A": 477.8, "B": 2143.9, "alpha": 0.3473,
                               "beta": 0.3672}
HOFFMANN_APPROACH3 = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def init_grid(kind: str = "full") -> np.ndarray:
    """Initialisations (a, b, e, alpha, beta), shape (k, 5). ``kind``: "full" (4 500, the
    paper's grid) or "coarse" (243)."""
    if kind == "full":
        al = be = np.arange(0.0, 2.5, 0.5)
        e = np.arange(-1.0, 1.5, 0.5)
        a = b = np.arange(0.0, 30.0, 5.0)
    elif kind == "coarse":
        al = be = np.array([0.0, 0.5, 1.0])
        e = np.array([-1.0, 0.0, 1.0])
        a = b = np.array([0.0, 10.0, 20.0])
    else:
        raise DataError(f"chinchilla: unknown grid {kind!r} (full or coarse)")
    return np.array([(ai, bi, ei, ali, bei)
                     for ali, bei, ei, ai, bi in itertools.product(al, be, e, a, b)])


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                    log_loss: np.ndarray, delta: float = HUBER_DELTA
                    ) -> tuple[float, np.ndarray]:
    """Sum of Huber losses of log-loss residuals and its gradient.

    Args:
        theta: shape (5,), (a, b, e, alpha, beta) with A = e^a, B = e^b, E = e^e.
        log_n, log_d, log_loss: shape (n,), natural logs of parameters, tokens and loss (nats).
        delta: Huber threshold on the log-loss residual.

    Returns:
        (objective, gradient shape (5,)).
    """
    a, b, e, alpha, beta = theta
    z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    m = z.max(axis=0)
    ez = np.exp(z - m)
    s = ez.sum(axis=0)
    pred = m + np.log(s)
    w = ez / s
    r = pred - log_loss
    ar = np.abs(r)
    h = float(np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta)).sum())
    g = np.clip(r, -delta, delta)
    grad = np.array([g @ w[0], g @ w[1], g @ w[2], -(g * w[0]) @ log_n, -(g * w[1]) @ log_d])
    return h, grad


def _one_blas_thread():
    """L-BFGS-B calls BLAS on 5-vectors; multi-threaded OpenBLAS makes each call ~100x slower
    on a busy machine, so the fits run with one BLAS thread (threadpoolctl, a dependency of
    scikit-learn) when available."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


#: tolerances of the bootstrap refits: the Huber objective is tiny (~1e-3), so L-BFGS-B's
#: default gtol would stop at the warm start (the premature-stopping issue Epoch describes).
_TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}


def _fit_from(starts: np.ndarray, log_n, log_d, log_loss, delta) -> tuple[np.ndarray, float]:
    best_x, best_f = None, math.inf
    for x0 in starts:
        r = minimize(huber_objective, x0, args=(log_n, log_d, log_loss, delta), jac=True,
                     method="L-BFGS-B")
        if np.isfinite(r.fun) and r.fun < best_f:
            best_x, best_f = r.x, float(r.fun)
    if best_x is None:
        raise DataError("chinchilla: no initialisation converged to a finite objective")
    return best_x, best_f


def _theta_to_params(x: np.ndarray) -> dict[str, float]:
    a, b, e, alpha, beta = (float(v) for v in x)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


@dataclass
class ComputeOptimal:
    """Compute-optimal allocation for a budget (FLOP) under C = 6 N D."""

    budget_flop: float
    n_params: float
    n_tokens: float
    loss: float

    @property
    def tokens_per_param(self) -> float:
        return self.n_tokens / self.n_params

    def to_dict(self) -> dict:
        return {"budget": {"value": self.budget_flop, "unit": "FLOP"},
                "n_params": {"value": self.n_params, "unit": "parameters"},
                "n_tokens": {"value": self.n_tokens, "unit": "tokens"},
                "tokens_per_param": {"value": self.tokens_per_param, "unit": "tokens/parameter"},
                "loss": {"value": self.loss, "unit": "nats/token"}}


@dataclass
class ChinchillaFit:
    """Fitted law. ``params``: E (nats/token), A, B, alpha, beta (dimensionless exponents);
    ``se``: bootstrap standard deviations (empty if ``n_boot == 0``)."""

    params: dict[str, float]
    se: dict[str, float]
    objective: float
    n: int
    grid: str
    n_starts: int
    n_boot: int
    n_boot_failed: int
    seconds: float
    delta: float = HUBER_DELTA
    theta: np.ndarray = field(default=None, repr=False)

    def predict_loss(self, n_params, n_tokens) -> np.ndarray:
        """L(N, D) in nats/token for arrays N (parameters) and D (tokens)."""
        p = self.params
        n = np.asarray(n_params, float)
        d = np.asarray(n_tokens, float)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    def compute_optimal(self, budget_flop: float) -> ComputeOptimal:
        """N_opt, D_opt for ``budget_flop`` FLOP (C = 6 N D). Raises DataError if <= 0."""
        if not (budget_flop > 0 and math.isfinite(budget_flop)):
            raise DataError(f"chinchilla: budget must be a positive number of FLOP, "
                            f"not {budget_flop!r}")
        p = self.params
        al, be = p["alpha"], p["beta"]
        g = (al * p["A"] / (be * p["B"])) ** (1.0 / (al + be))
        c6 = budget_flop / 6.0
        n = g * c6 ** (be / (al + be))
        d = c6 ** (al / (al + be)) / g
        return ComputeOptimal(budget_flop, n, d, float(self.predict_loss(n, d)))

    def to_dict(self) -> dict:
        units = {"E": "nats/token", "A": "nats/token * parameters^alpha",
                 "B": "nats/token * tokens^beta", "alpha": "1", "beta": "1"}
        return {
            "params": {k: {"value": v, "unit": units[k], "se_bootstrap": self.se.get(k)}
                       for k, v in self.params.items()},
            "objective": {"value": self.objective, "unit": "sum of Huber(delta) on log-loss"},
            "delta": self.delta, "n": self.n,
            "optimizer": {"method": "L-BFGS-B (scipy), analytic gradient, best of grid",
                          "grid": self.grid, "n_starts": self.n_starts},
            "bootstrap": {"n_boot": self.n_boot, "n_failed": self.n_boot_failed,
                          "method": "pairs resampling of runs, refit from the optimum, SD"},
            "seconds": {"value": self.seconds, "unit": "s"},
        }


def fit_chinchilla(n_params: Sequence[float], n_tokens: Sequence[float],
                   loss: Sequence[float], *, grid: str = "full", delta: float = HUBER_DELTA,
                   n_boot: int = 100, seed: int = 0) -> ChinchillaFit:
    """Fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022 Approach 3, Epoch 2024).

    Args:
        n_params: shape (n,), parameters N (count, > 0).
        n_tokens: shape (n,), training tokens D (count, > 0).
        loss: shape (n,), final loss (nats/token, > 0).
        grid: "full" (4 500 starts, ~15 s on one core) or "coarse" (243 starts).
        delta: Huber threshold (1e-3 as in the papers).
        n_boot: bootstrap resamples for standard errors (0 = none).
        seed: bootstrap RNG seed.

    Returns:
        :class:`ChinchillaFit`.

    Raises:
        DataError: shapes differ, a value non-finite or <= 0, fewer than 6 runs (5 params).
    """
    t0 = time.perf_counter()
    n = np.asarray(n_params, float).ravel()
    d = np.asarray(n_tokens, float).ravel()
    y = np.asarray(loss, float).ravel()
    if not (n.shape == d.shape == y.shape):
        raise DataError(f"chinchilla: N, D and loss have {n.size}, {d.size}, {y.size} values")
    for name, v in (("N", n), ("D", d), ("loss", y)):
        bad = np.flatnonzero(~np.isfinite(v) | (v <= 0))
        if bad.size:
            raise DataError(f"chinchilla: point {bad[0]} has {name} = {v[bad[0]]!r}; "
                            "a log-scale fit needs finite values > 0")
    if n.size < 6:
        raise DataError(f"chinchilla: {n.size} run(s); fitting 5 parameters needs at least 6")
    ln, ld, ly = np.log(n), np.log(d), np.log(y)
    starts = init_grid(grid)
    with _one_blas_thread():
        x, f = _fit_from(starts, ln, ld, ly, delta)
        se, failed = _bootstrap_se(x, ln, ld, ly, delta, n_boot, seed)
    return ChinchillaFit(_theta_to_params(x), se, f, int(n.size), grid, len(starts), n_boot,
                         failed, time.perf_counter() - t0, delta, x)


def _bootstrap_se(x, ln, ld, ly, delta, n_boot, seed) -> tuple[dict[str, float], int]:
    se: dict[str, float] = {}
    failed = 0
    n = ln.size
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(n_boot):
            idx = rng.integers(0, n, n)
            r = minimize(huber_objective, x, args=(ln[idx], ld[idx], ly[idx], delta), jac=True,
                         method="L-BFGS-B", options=_TIGHT)
            if not np.all(np.isfinite(r.x)):
                failed += 1
                continue
            p = _theta_to_params(r.x)
            draws.append([p[k] for k in PARAMS])
        if len(draws) >= 2:
            arr = np.array(draws)
            se = {k: float(s) for k, s in zip(PARAMS, arr.std(axis=0, ddof=1))}
    return se, failed


@dataclass
class ChinchillaResult:
    """Fit, compute-optimal allocation, comparison with the published figures, and rows."""

    fit: ChinchillaFit
    optimal: ComputeOptimal
    n_input: int
    dropped: list[DroppedRow]
    file: str
    exclude_fewest_tokens: int
    points: pd.DataFrame = field(repr=False, default=None)
    credit: str = CREDIT

    def to_dict(self) -> dict:
        return {
            "analysis": "chinchilla",
            "what": "parametric scaling law L(N,D) = E + A/N^alpha + B/D^beta, D = FLOP/(6N)",
            "method": "Huber (delta=1e-3) on log-loss, log-sum-exp parametrisation, L-BFGS-B "
                      "from a grid of initialisations (Hoffmann et al. 2022 Approach 3; "
                      "Besiroglu et al. 2024)",
            "credit": self.credit,
            "fit": self.fit.to_dict(),
            "compute_optimal": self.optimal.to_dict(),
            "published": {"epoch_2024": PUBLISHED_EPOCH, "epoch_2024_se": PUBLISHED_EPOCH_SE,
                          "epoch_2024_replicate_exactly": PUBLISHED_REPLICATE_EXACTLY,
                          "hoffmann_2022_approach3": HOFFMANN_APPROACH3},
            "rows": {"n_input": self.n_input, "n_used": self.fit.n,
                     "n_dropped": len(self.dropped),
                     "exclude_fewest_tokens": self.exclude_fewest_tokens,
                     "dropped": [x.to_dict() for x in self.dropped]},
            "file": self.file,
        }


def load_chinchilla(data_dir: str | os.PathLike | None = None, *,
                    exclude_fewest_tokens: int = 5) -> tuple[pd.DataFrame, list[DroppedRow],
                                                             int, str]:
    """Read ``DIR/epoch-chinchilla-replication/svg_extracted_data.csv``.

    Returns:
        (points with columns N, D, FLOP, loss, row; dropped rows; rows read; file).

    Raises:
        DataError: missing file/column; a cell that is not a number, missing, or <= 0 in
            ``Model Size``, ``Training FLOP`` or ``loss`` (names file, row, field).
    """
    path = data_file(CHINCHILLA, data_dir)
    cols = ("Model Size", "Training FLOP", "loss")
    df = read_table(path, required=cols)
    vals = {c: [] for c in cols}
    for r in df.index:
        for c in cols:
            raw = df.at[r, c]
            try:
                v = to_number(raw)
            except ValueError:
                raise DataError(f"{path} row {r}, field '{c}': {raw!r} is not a number") from None
            if not (math.isfinite(v) and v > 0):
                raise DataError(f"{path} row {r}, field '{c}': {raw!r} must be a number > 0 "
                                "(log scale)")
            vals[c].append(v)
    pts = pd.DataFrame({"N": vals["Model Size"], "FLOP": vals["Training FLOP"],
                        "loss": vals["loss"], "row": df.index.to_numpy()})
    pts["D"] = pts["FLOP"] / (6.0 * pts["N"])
    dropped: list[DroppedRow] = []
    if exclude_fewest_tokens > 0:
        order = np.argsort(pts["D"].to_numpy(), kind="stable")[:exclude_fewest_tokens]
        for i in sorted(order):
            r = pts.iloc[i]
            dropped.append(DroppedRow(int(r["row"]), f"N={r['N']:.3g}, D={r['D']:.3g}",
                                      f"one of the {exclude_fewest_tokens} runs with the fewest "
                                      "tokens (excluded as in Epoch's replication fit)",
                                      str(path)))
        pts = pts.drop(index=pts.index[order]).reset_index(drop=True)
    return pts, dropped, len(df), str(path)


def run_chinchilla(data_dir: str | os.PathLike | None = None, *, budget_flop: float = 1e21,
                   grid: str = "full", n_boot: int = 100, seed: int = 0,
                   exclude_fewest_tokens: int = 5) -> ChinchillaResult:
    """Load the replication data, fit the law, and allocate ``budget_flop`` FLOP optimally.

    Raises:
        DataError: bad file/rows (see :func:`load_chinchilla`), bad budget, < 6 runs.
    """
    if not (budget_flop > 0 and math.isfinite(budget_flop)):
        raise DataError(f"chinchilla: --budget must be a positive number of FLOP, "
                        f"not {budget_flop!r}")
    pts, dropped, n_in, path = load_chinchilla(data_dir,
                                               exclude_fewest_tokens=exclude_fewest_tokens)
    fit = fit_chinchilla(pts["N"], pts["D"], pts["loss"], grid=grid, n_boot=n_boot, seed=seed)
    return ChinchillaResult(fit, fit.compute_optimal(budget_flop), n_in, dropped, path,
                            exclude_fewest_tokens, pts)


# --------------------------------------------------------------------------- presentation
def chinchilla_table(result: ChinchillaResult):
    """A rich Table: fitted parameters with bootstrap SE beside the published values, and the
    compute-optimal allocation."""
    from rich.table import Table

    f = result.fit
    tab = Table(title="Chinchilla law L(N,D) = E + A/N^alpha + B/D^beta "
                      f"(n = {f.n}, grid {f.grid}: {f.n_starts} starts, {f.seconds:.1f} s)",
                caption=result.credit + f" | rows: {f.n} used, {len(result.dropped)} dropped "
                f"of {result.n_input}")
    for c in ("quantity", "fit", "bootstrap SE", "Epoch 2024", "Epoch SE", "Hoffmann 2022"):
        tab.add_column(c, justify="left" if c == "quantity" else "right", overflow="fold")
    for k in PARAMS:
        v = f.params[k]
        fmt = (lambda x: f"{x:.4g}") if k in ("E", "alpha", "beta") else (lambda x: f"{x:.1f}")
        tab.add_row(k, fmt(v), fmt(f.se[k]) if k in f.se else "-", fmt(PUBLISHED_EPOCH[k]),
                    fmt(PUBLISHED_EPOCH_SE[k]), fmt(HOFFMANN_APPROACH3[k]))
    o = result.optimal
    tab.add_row(f"N_opt at C = {o.budget_flop:.3g} FLOP", f"{o.n_params:.3g} params", "", "",
                "", "")
    tab.add_row("D_opt", f"{o.n_tokens:.3g} tokens", "", "", "", "")
    tab.add_row("tokens per parameter", f"{o.tokens_per_param:.1f}", "", "~20", "", "")
    tab.add_row("predicted loss", f"{o.loss:.3f} nats/token", "", "", "", "")
    return tab


def plot_chinchilla(result: ChinchillaResult, path: str | os.PathLike) -> Path:
    """Save a figure: observed vs fitted loss against tokens (coloured by N), and the
    compute-optimal N and D against compute. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f = result.fit
    pts = result.points
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    sc = ax1.scatter(pts["D"], pts["loss"], c=np.log10(pts["N"]), s=10, cmap="viridis",
                     label="runs (Epoch digitisation)")
    ax1.scatter(pts["D"], f.predict_loss(pts["N"], pts["D"]), s=6, marker="x", c="k", lw=0.5,
                label="fitted L(N, D)")
    ax1.set_xscale("log")
    ax1.set_xlabel("training tokens D")
    ax1.set_ylabel("loss (nats/token)")
    ax1.legend(fontsize=7)
    fig.colorbar(sc, ax=ax1, label="log10 parameters N")
    c = np.logspace(18, 26, 50)
    opt = [f.compute_optimal(ci) for ci in c]
    ax2.loglog(c, [o.n_params for o in opt], label="N_opt (parameters)")
    ax2.loglog(c, [o.n_tokens for o in opt], label="D_opt (tokens)")
    o = result.optimal
    ax2.plot([o.budget_flop] * 2, [o.n_params, o.n_tokens], "ko", ms=4)
    ax2.set_xlabel("compute C = 6ND (FLOP)")
    ax2.set_title(f"At {o.budget_flop:.3g} FLOP: N={o.n_params:.3g}, D={o.n_tokens:.3g} "
                  f"({o.tokens_per_param:.1f} tokens/param)", fontsize=8)
    ax2.legend(fontsize=7)
    p = f.params
    fig.suptitle(f"E={p['E']:.3f}, A={p['A']:.1f}, B={p['B']:.1f}, alpha={p['alpha']:.4f}, "
                 f"beta={p['beta']:.4f}", fontsize=10)
    from moorelab.law.prices import save_figure

    return save_figure(fig, path, result.credit, rect=(0, 0.03, 1, 0.95))


def emit_chinchilla(result: ChinchillaResult, *, as_json: bool,
                    plot: str | os.PathLike | None) -> None:
    """Table or JSON for ``moorelab trend chinchilla``."""
    from moorelab.law.prices import emit_analysis

    emit_analysis(result, as_json=as_json, plot=plot, table_fn=chinchilla_table,
                  plot_fn=plot_chinchilla)
