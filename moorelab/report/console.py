"""The terminal side of the long jobs (`moorelab run`, `moorelab improve`): progress display, the
table of every row's figures with its ratios to the baseline, the kernels each row ran, and each
gain in tokens per dollar and months of the reference trends."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table


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
    ("perplexity", "per token", ".2f", 1.0),
    ("prefill_tokens_per_s", "tokens/s", ".1f", 1.0),
    ("decode_tokens_per_s", "tokens/s", ".1f", 1.0),
    ("decode_latency_p50_ms", "ms/token", ".1f", 1.0),
    ("decode_latency_p99_ms", "ms/token", ".1f", 1.0),
    ("peak_rss_bytes", "MB", ".0f", 1e-6),
    ("weight_bytes", "MB", ".1f", 1e-6),
    ("parameters", "millions", ".2f", 1e-6),
    ("usd_per_million_tokens_decode", "$/1M tokens", ".3f", 1.0),
    ("decode_cpu_share", "CPU share", ".2f", 1.0),
]


_TREND_NAMES = {"algorithmic_efficiency": "algorithmic efficiency", "llm_price_at_fixed_capability": "LLM price at fixed capability"}


def print_gains(console: Console, rows: list[dict]) -> None:
    """One line per variant: tokens per dollar against the baseline, the change in bits per byte,
    and the gain in months of each reference trend (negative for a loss, 90% interval); then a
    warning for rows whose decode was measured while other processes took the CPU."""
    for r in rows[1:]:
        pc = r["performance_per_cost"]
        mo = pc["months_of_trend"] or {}
        extra = "".join(
            f"; {m['value']:+.1f} months of {_TREND_NAMES.get(name, name)} ({m['factor_per_year']:g}x/year"
            + (f", 90% CI {m['ci'][0]:+.1f} to {m['ci'][1]:+.1f}" if m.get("ci") else "") + ")"
            for name, m in mo.items()
        )
        n = len(r.get("speed_protocol", {}).get("decode_rounds", [None]))
        how = "measured once" if n == 1 else f"median of {n} interleaved measurements"
        console.print(f"{r['name']}: ×{pc['gain_vs_baseline']['value']:.2f} tokens per $ (decode, {how}), "
                      f"Δ bits/byte {pc['delta_bits_per_byte']['value']:+.4f}{extra}")
    busy = [r for r in rows if r.get("speed_disturbed")]
    if busy:
        listed = ", ".join(f"{r['name']} ({r['metrics']['decode_cpu_share']['value']:.0%})" for r in busy)
        scope = ("the baseline was disturbed, so every gain and months figure above is invalid"
                 if busy[0] is rows[0] else "their tokens/s, costs and gains are not comparable with the other rows")
        console.print(f"[bold red]warning:[/] other processes took the CPU while these rows decoded (share of their "
                      f"threads' CPU time, undisturbed ~0.99): {listed}; {scope}; re-run on an idle machine")


def print_kernels(console: Console, rows: list[dict]) -> None:
    """One line per row: the kernels it ran and its decode path."""
    for r in rows:
        console.print(f"kernel, {r['name']}: {r['kernel']}")


#: the summary table's metric labels (unit included; short, to fit 80 columns)
_LABELS = {
    "bits_per_byte": "bits per byte", "perplexity": "perplexity (per token)",
    "prefill_tokens_per_s": "prefill tokens/s", "decode_tokens_per_s": "decode tokens/s",
    "decode_latency_p50_ms": "decode p50 ms/token", "decode_latency_p99_ms": "decode p99 ms/token",
    "peak_rss_bytes": "peak RSS (MB)", "weight_bytes": "weights (MB)", "parameters": "parameters (M)",
    "usd_per_million_tokens_decode": "$ per 1M decode tokens", "decode_cpu_share": "decode CPU share",
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
            if r["technique"] != "none":
                q = r.get("vs_baseline", {}).get(key)
                cell += " ×–" if q is None else f" ×{q:.2f}"
            cells.append(cell)
        t.add_row(*cells)
    return t
