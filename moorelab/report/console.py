"""The terminal side of the long jobs (`moorelab run`, `moorelab improve`): progress display, the
table of every row's figures with its ratios to the baseline (speed ratios with their interval,
"no measurable difference" when it contains 1), the kernels each row ran, the speed protocol's
bookkeeping (rounds kept, measurements excluded and re-measured), and each row's tokens per
dollar with the verdict on it (a gain and months of the reference trends only at equal quality).
Every number printed is read from the row, as written to results.json."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from moorelab.report.results import NO_RATIO_METRICS


def make_progress(console: Console) -> Progress:
    """The rich progress display used by long commands."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


SUMMARY_METRICS = [
    ("bits_per_byte", "bits/byte", ".4f", 1.0),
    ("bits_per_character", "bits/character", ".4f", 1.0),
    ("perplexity", "per token", ".2f", 1.0),
    ("prefill_tokens_per_s", "tokens/s", ".1f", 1.0),
    ("decode_tokens_per_s", "tokens/s", ".1f", 1.0),
    ("decode_latency_p50_ms", "ms/token", ".1f", 1.0),
    ("decode_latency_p99_ms", "ms/token", ".1f", 1.0),
    ("peak_rss_bytes", "MB", ".0f", 1e-6),
    ("weight_bytes", "MB", ".1f", 1e-6),
    ("parameters", "millions", ".2f", 1e-6),
    ("usd_per_million_tokens_decode", "$/1M tokens", ".3f", 1.0),
    ("cpu_share", "CPU share", ".2f", 1.0),
]


_TREND_NAMES = {"algorithmic_efficiency": "algorithmic efficiency", "llm_price_at_fixed_capability": "LLM price at fixed capability"}


def ratio_text(q: dict | None) -> str:
    """A ``vs_baseline`` entry as table text: "×0.37" (plain ratio), "×2.78 (2.61–2.95)" (paired,
    measurable), "no measurable difference (×0.97–1.08)" (interval contains 1), "not claimed"."""
    if q is None:
        return "–"
    if "ci" not in q:
        return f"×{q['value']:.2f}"
    if q["value"] is None:
        return "not claimed"
    lo, hi = q["ci"]
    if q["verdict"] == "no measurable difference":
        return f"no measurable difference (×{lo:.2f}–{hi:.2f})"
    return f"×{q['value']:.2f} ({lo:.2f}–{hi:.2f})"


def print_gains(console: Console, rows: list[dict]) -> None:
    """One line per variant: tokens per dollar against the baseline with its interval, the change
    in bits per byte against the quality rule, the verdict, and, for a credited gain only, the
    months of each reference trend (with the command that reproduces each)."""
    for r in rows[1:]:
        pc = r["performance_per_cost"]
        g = pc["gain_vs_baseline"]
        rule = pc["quality_rule"]["max_delta_bits_per_byte"]
        if g["value"] is None:
            factor = "tokens per $ not claimed"
        elif g.get("ci"):
            factor = (f"×{g['value']:.2f} tokens per $ (decode; {g['confidence']:.0%} interval "
                      f"{g['ci'][0]:.2f}–{g['ci'][1]:.2f})")
        else:
            factor = f"×{g['value']:.2f} tokens per $ (decode)"
        line = (f"{r['name']}: {factor}, Δ bits/byte {pc['delta_bits_per_byte']['value']:+.4f} "
                f"(rule: ≤ +{rule:g}) → {pc['verdict']}")
        for name, m in (pc["months_of_trend"] or {}).items():
            line += (f"; {m['value']:+.1f} months of {_TREND_NAMES.get(name, name)} ({m['factor_per_year']:g}x/year"
                     + (f", 90% CI {m['ci'][0]:+.1f} to {m['ci'][1]:+.1f}" if m.get("ci") else "") + ")")
        console.print(line)
    cmds = [m["command"] for r in rows[1:] for m in ((r["performance_per_cost"]["months_of_trend"] or {}).values())]
    if cmds:
        console.print("reproduce each months figure: " + "; ".join(f"`{c}`" for c in cmds))


def print_speed_protocol(console: Console, rows: list[dict]) -> None:
    """The speed protocol's bookkeeping: rounds, threshold, per row rounds kept and measurements
    excluded (re-measured), and a warning naming rows too disturbed for any ratio or gain."""
    sp = rows[0].get("speed_protocol")
    if not sp:
        return
    per_row = ", ".join(
        f"{r['name']} {r['speed_protocol']['rounds_kept']}/{sp['rounds']} kept, "
        f"{r['speed_protocol']['disturbed_measurements']} excluded, {r['speed_protocol']['remeasured']} re-measured"
        for r in rows)
    console.print(
        f"speed protocol: {sp['rounds']} rounds, variants interleaved, {sp['threads']} threads; a measurement whose CPU share "
        f"({sp['cpu_share_method']}) is under {sp['min_cpu_share']:.2f} is excluded and re-measured "
        f"(≤ {sp['max_tries_per_round']} tries per round); figures are medians of undisturbed rounds; "
        f"ratios pair rounds ({sp['undisturbed_rounds_needed']} needed): {per_row}")
    busy = [r for r in rows if r.get("speed_disturbed")]
    if busy:
        listed = ", ".join(r["name"] for r in busy)
        scope = ("the baseline is among them, so no speed ratio, gain or months figure is claimed for any row"
                 if busy[0] is rows[0] else "their speed figures are shown but no ratio, gain or months figure is claimed for them")
        console.print(f"[bold red]warning:[/] other processes kept taking the CPU: too few undisturbed rounds for "
                      f"{listed}; {scope}; re-run on an idle machine")


def print_float_weights(console: Console, section: dict) -> None:
    """The section on truly float32 weights (MiniLM): per technique the weight SQNR and the
    cosine similarity of sentence embeddings against float32, or why it was skipped."""
    title = f"quantization on true float32 weights, {section['model']}"
    if section.get("skipped"):
        console.print(f"{title}: skipped, {section['skipped']}")
        return
    n = section["sentences"]["count"]
    console.print(f"{title}: {section['what']}; {n} sentences of {section['sentences']['from']}")
    for r in section["rows"]:
        console.print(f"  {r['name']}: weight SQNR {r['weight_sqnr_db']['value']:.1f} dB (lowest layer "
                      f"{r['min_layer_sqnr_db']['value']:.1f} dB); embedding cosine similarity mean "
                      f"{r['mean_cosine_similarity']['value']:.4f}, lowest {r['min_cosine_similarity']['value']:.4f}")


def print_kernels(console: Console, rows: list[dict]) -> None:
    """One line per row: the kernels it ran and its decode path."""
    for r in rows:
        console.print(f"kernel, {r['name']}: {r['kernel']}")


#: the summary table's metric labels (unit included; short, to fit 80 columns)
_LABELS = {
    "bits_per_byte": "bits per byte", "bits_per_character": "bits per character", "perplexity": "perplexity (per token)",
    "prefill_tokens_per_s": "prefill tokens/s", "decode_tokens_per_s": "decode tokens/s",
    "decode_latency_p50_ms": "decode p50 ms/token", "decode_latency_p99_ms": "decode p99 ms/token",
    "peak_rss_bytes": "peak RSS (MB)", "weight_bytes": "weights (MB)", "parameters": "parameters (M)",
    "usd_per_million_tokens_decode": "$ per 1M decode tokens", "cpu_share": "CPU share (median kept)",
}


def summary_table(rows: list[dict]) -> Table:
    """Terminal table: one line per metric, one column per model variant.

    A variant's cell holds its value and its ratio to the baseline ("14.9 ×1.31"): with the
    variants' names as headers this fits 80 columns for the default run's four rows, and with
    more rows cells wrap at their space and fold rather than being cut (no "…"), in a terminal
    as in a pipe or a log file.
    """
    t = Table(title="Measured on the same text (×: ratio to the first column)")
    t.add_column("metric", overflow="fold")
    for r in rows:
        t.add_column(r["name"], justify="right", overflow="fold")
    for key, unit, fmt, scale in SUMMARY_METRICS:
        cells = [_LABELS.get(key, f"{key} ({unit})")]
        for r in rows:
            m = r["metrics"].get(key)
            cell = "–" if m is None or m["value"] is None else format(m["value"] * scale, fmt)
            if r["technique"] != "none" and key not in NO_RATIO_METRICS:
                q = r.get("vs_baseline", {}).get(key)
                cell += " ×–" if q is None else " " + ratio_text(q)
            cells.append(cell)
        t.add_row(*cells)
    return t
