"""The results row: one model variant measured on the task, every figure with its unit.

A *row* is one model variant measured on the same task (baseline or a technique)::

    {"name": "int8", "technique": "int8", "kernel": "moorelab-avx2-gemv int8; fused decode",
     "metrics": {"bits_per_byte": {"value": 0.93, "unit": "bits/byte"}, ...},
     "speed_protocol": {...}, "speed_ratios": {...},
     "vs_baseline": {"decode_tokens_per_s": {"value": 1.8, "ci": [1.7, 1.9], "verdict": "higher", ...}, ...}}

Every figure appears once, under ``metrics`` (the terminal table and the HTML report read it
there). :func:`~moorelab.measure.task.measure_model` builds rows with :func:`make_row`;
:func:`~moorelab.measure.task.measure_speed_rows` adds the speed figures, the protocol record
and the paired speed ratios; the report adds ``vs_baseline`` and the gains
(:mod:`moorelab.report.results`).
"""

from __future__ import annotations

# metric name -> (unit, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {
    "bits_per_byte": ("bits/byte", False),
    "bits_per_character": ("bits/character (Unicode code point)", False),
    "perplexity": ("1 (per token)", False),
    "prefill_tokens_per_s": ("tokens/s", True),
    "decode_tokens_per_s": ("tokens/s", True),
    "decode_latency_p50_ms": ("ms/token", False),
    "decode_latency_p90_ms": ("ms/token", False),
    "decode_latency_p99_ms": ("ms/token", False),
    "peak_rss_bytes": ("bytes", False),
    "parameters": ("parameters", False),
    "weight_bytes": ("bytes", False),
    "usd_per_million_tokens_decode": ("$/1M tokens", False),
    "cpu_share": ("1 (share of CPU time; method in speed_protocol.cpu_share_method)", True),
}


def metric(name: str, value: float | int) -> dict:
    """A figure with its unit, from :data:`METRICS`.

    Raises:
        KeyError: unknown metric name.
    """
    unit, _ = METRICS[name]
    return {"value": value, "unit": unit}


def make_row(name: str, technique: str, kernel: str, values: dict[str, float], notes: str = "") -> dict:
    """Build a results row; every key of ``values`` must be a known metric."""
    return {
        "name": name,
        "technique": technique,
        "kernel": kernel,
        "notes": notes,
        "metrics": {k: metric(k, v) for k, v in values.items()},
    }
