from rich.console import Console

from moorelab.measure.row import make_row
from moorelab.report.console import print_gains, print_speed_protocol, ratio_text
from moorelab.report.results import add_cost_gain


def _row(name, ratio, ci, delta, disturbed=False, verdict="higher"):
    r = make_row(name, "none" if name == "base" else "x", "k",
                 {"bits_per_byte": 1.0 + delta, "usd_per_million_tokens_decode": 0.29 / (ratio or 1), "cpu_share": 0.97})
    r["speed_protocol"] = {"rounds": 5, "threads": 2, "cpu_share_method": "cpu/(cpu+run-queue wait)", "min_cpu_share": 0.9,
                           "max_tries_per_round": 3, "undisturbed_rounds_needed": 5, "rounds_kept": 2 if disturbed else 5,
                           "disturbed_measurements": 7 if disturbed else 1, "remeasured": 6 if disturbed else 1}
    r["speed_disturbed"] = disturbed
    if name != "base":
        r["vs_baseline"] = {"decode_tokens_per_s": {"value": ratio, "ci": ci, "confidence": 0.9375 if ci else None,
                                                    "pairs": 5, "verdict": verdict}}
    return r


def test_gains_say_what_is_credited_and_protocol_names_disturbed_rows():
    rows = [_row("base", 1.0, None, 0.0), _row("fast", 2.9, [2.7, 3.1], 0.002), _row("worse", 2.8, [2.6, 3.0], 0.036),
            _row("same", 1.02, [0.95, 1.08], 0.0, verdict="no measurable difference"),
            _row("disturbed", None, None, 0.0, disturbed=True, verdict="not claimed: this variant had fewer than 5 undisturbed rounds")]
    add_cost_gain(rows, rows[0])
    console = Console(record=True, width=400)
    print_gains(console, rows)
    print_speed_protocol(console, rows)
    out = console.export_text()
    assert "fast: ×2.90 tokens per $ (decode; 94% interval 2.70–3.10), Δ bits/byte +0.0020 (rule: ≤ +0.01) → gain at equal quality" in out
    assert "+12.0 months of algorithmic efficiency (2.9x/year, 90% CI +9.2 to +17.0)" in out  # 12·ln 2.9 / ln(3.98 or 2.12)
    assert "LLM price at fixed capability" in out
    assert "worse: ×2.80" in out and "→ no gain at equal quality: bits per byte +0.0360 exceeds the +0.01 allowed" in out
    assert "same: ×1.02" in out and "→ no measurable difference in tokens per $" in out
    assert "disturbed: tokens per $ not claimed" in out
    assert out.count("months of algorithmic efficiency") == 1  # only the credited row
    assert "`moorelab trend months 2.9 --trend algorithmic_efficiency`" in out
    assert "disturbed 2/5 kept, 7 excluded, 6 re-measured" in out and "fast 5/5 kept, 1 excluded, 1 re-measured" in out
    assert "warning" in out and "too few undisturbed rounds for disturbed;" in out and "no ratio, gain or months" in out
    # a disturbed baseline invalidates every ratio
    rows[0]["speed_disturbed"] = True
    console = Console(record=True, width=400)
    print_speed_protocol(console, rows)
    assert "the baseline is among them" in console.export_text()


def test_ratio_cells():
    assert ratio_text({"value": 0.37, "method": "ratio of the two figures"}) == "×0.37"
    assert ratio_text({"value": 2.78, "ci": [2.61, 2.95], "verdict": "higher"}) == "×2.78 (2.61–2.95)"
    assert ratio_text({"value": 1.02, "ci": [0.97, 1.08], "verdict": "no measurable difference"}) == \
        "no measurable difference (×0.97–1.08)"
    assert ratio_text({"value": None, "ci": None, "verdict": "not claimed: x"}) == "not claimed"
