"""The results row: one model variant measured on the task, every figure with its unit.

A *row* is one model variant measured on the same task (baseline or a technique)::

    {"name": "float32", "technique": "none", "kernel": "torch fp32 matmul",
     "metrics": {"bits_per_byte": {"value": 0.93, "unit": "bits/byte"}, ...},
     "vs_baseline": {"decode_tokens_per_s": 1.8, ...}}

:func:`~moorelab.measure.task.measure_model` builds rows with :func:`make_row`; the report adds
``vs_baseline`` and the gains (:mod:`moorelab.report.results`).
"""

from __future__ import annotations

# metric name -> (unit, higher_is_better)
METRICS: dict[str, tuple[str, bool]] = {
    "bits_per_byte": ("bits/byte", False),
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
    "decode_cpu_share": ("CPU s / (wall s x threads)", True),
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
