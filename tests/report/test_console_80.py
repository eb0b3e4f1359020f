"""The run and improve summaries on an 80-column terminal or a pipe: nothing cut, every value
and every ratio present."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from moorelab.measure.row import make_row
from moorelab.report.console import SUMMARY_METRICS, print_gains, print_kernels, summary_table
from moorelab.report.results import add_cost_gain, add_ratios

BASE = dict(bits_per_byte=1.7277, bits_per_character=1.7351, perplexity=53.23, prefill_tokens_per_s=116.2, decode_tokens_per_s=11.3,
            decode_latency_p50_ms=73.4, decode_latency_p99_ms=155.8, peak_rss_bytes=1_124e6, weight_bytes=538.1e6,
            parameters=134_515_008, usd_per_million_tokens_decode=2.458, cpu_share=0.97)
RUN_ROWS = ["float32", "int8 weight-only", "int4 weight-only g32 a8", "FFN channels pruned 25%"]
IMPROVE_ROWS = ["baseline", "int8", "int8 + ffn:fraction=0.25", "int8 + ffn:fraction=0.25 + wanda:sparsity=0.5"]


def rows_named(names):
    rows = []
    for i, name in enumerate(names):
        values = {k: v * (1 + 0.37 * i) for k, v in BASE.items()}
        row = make_row(name, "none" if i == 0 else f"t{i}", f"kernel {i}", values)
        if i:  # speed ratios as the paired rounds leave them: median ratio, interval, verdict
            f = 1 + 0.37 * i
            row["vs_baseline"] = {k: {"value": f, "ci": [f * 0.9, f * 1.1], "confidence": 0.94, "pairs": 5,
                                      "verdict": "higher", "unit": "x baseline"}
                                  for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_latency_p50_ms",
                                            "decode_latency_p99_ms", "usd_per_million_tokens_decode")}
        rows.append(row)
    add_ratios(rows, rows[0])
    add_cost_gain(rows, rows[0], max_delta_bits_per_byte=10.0)
    return rows


def at_80(fn) -> str:
    con = Console(width=80, file=io.StringIO())
    fn(con)
    return con.file.getvalue()


@pytest.mark.parametrize("names", [RUN_ROWS, IMPROVE_ROWS], ids=["run", "improve"])
def test_summary_fits_80_columns_with_every_value_and_ratio(names):
    rows = rows_named(names)
    out = at_80(lambda con: con.print(summary_table(rows)))
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    for key, _unit, fmt, scale in SUMMARY_METRICS:
        for r in rows:
            assert format(r["metrics"][key]["value"] * scale, fmt) in out, (key, r["name"])
            if r["technique"] != "none" and key != "cpu_share":
                assert f"×{r['vs_baseline'][key]['value']:.2f}" in out, (key, r["name"])
    assert "×1.37" in out and "×2.11" in out  # 1 + 0.37 i: the ratios really are the rows'


def test_gains_and_kernels_lines_are_not_cut_at_80_columns():
    rows = rows_named(RUN_ROWS)
    out = at_80(lambda con: (print_kernels(con, rows), print_gains(con, rows)))
    assert "…" not in out
    flat = " ".join(out.split())
    for r in rows[1:]:
        assert f"{r['name']}: ×{r['performance_per_cost']['gain_vs_baseline']['value']:.2f} tokens per $" in flat
    assert "kernel, FFN channels pruned 25%: kernel 3" in flat
