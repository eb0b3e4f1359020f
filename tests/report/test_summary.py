"""report.html for a reader (moorelab/report/summary.py, html.py, plots.py) on rows built the way a
run builds them (add_ratios, add_cost_gain): the summary's figures and verdicts, human labels,
ratios beside values, the variants placed on the reference trends, and the page in a browser."""

import math

import pytest

from moorelab.report import html as html_report
from moorelab.report import plots, summary
from moorelab.report.results import add_cost_gain, add_ratios

ENV = {"cpu_model": "Test CPU 9000", "cpu_count": 2, "torch_threads": 2, "torch_version": "2.13.0+cpu"}
TASK = {"text": "Macbeth (test slice)", "bytes": 2997, "tokens": 903,
        "usd_per_hour_assumed": {"value": 0.1, "unit": "$/hour"}}


def _protocol(disturbed=False, excluded=0):
    return {"rounds": 5, "max_tries_per_round": 3, "min_cpu_share": 0.9, "cpu_share_method": "cpu/(cpu+wait)",
            "undisturbed_rounds_needed": 5, "threads": 2, "rounds_kept": 2 if disturbed else 5,
            "measurements": 5 + excluded, "remeasured": excluded, "disturbed_measurements": excluded,
            "disturbed": disturbed, "figures_are": "medians of undisturbed rounds"}


def _paired(value, ci):
    if value is None:
        return {"value": None, "ci": None, "confidence": None, "pairs": 2,
                "verdict": "not claimed: this variant had fewer than 5 undisturbed rounds"}
    lo, hi = ci
    verdict = "no measurable difference" if lo <= 1 <= hi else ("higher" if lo > 1 else "lower")
    return {"value": value, "ci": list(ci), "confidence": 0.9375, "pairs": 5, "verdict": verdict,
            "method": "median of per-round paired ratios"}


def _row(name, technique, bpb, decode_ratio=None, ci=None, disturbed=False, excluded=0, extra=None):
    decode = 30.0 * (decode_ratio or 1.0)
    metrics = {"bits_per_byte": bpb, "perplexity": 2 ** (bpb * 3.3), "prefill_tokens_per_s": 260.0,
               "decode_tokens_per_s": decode, "decode_latency_p50_ms": 1000 / decode, "peak_rss_bytes": 1.1e9,
               "weight_bytes": 5.4e8 / (decode_ratio or 1.0), "parameters": 134_515_008,
               "usd_per_million_tokens_decode": 0.1 / (3600 * decode) * 1e6, "cpu_share": 0.99, **(extra or {})}
    units = {"bits_per_byte": "bits/byte", "accuracy": "fraction"}
    row = {"name": name, "technique": technique, "kernel": f"kernel of {name}; fused decode", "notes": f"notes of {name}",
           "metrics": {k: {"value": v, "unit": units.get(k, "unit")} for k, v in metrics.items()},
           "speed_disturbed": disturbed, "speed_protocol": _protocol(disturbed, excluded)}
    if technique != "none":
        d = _paired(None if disturbed else decode_ratio, ci)
        inv = dict(d) if d["value"] is None else {**d, "value": 1 / d["value"], "ci": [1 / ci[1], 1 / ci[0]]}
        row["vs_baseline"] = {"decode_tokens_per_s": d, "usd_per_million_tokens_decode": inv}
    return row


@pytest.fixture
def rows():
    rows = [
        _row("float32", "none", 1.7277),
        _row("int8 weight-only", "int8", 1.7264, 2.0, (1.9, 2.1), excluded=3),
        _row("int4 weight-only g32 a8", "int4:group_size=32,activation_bits=8", 1.7637, 3.1, (2.8, 3.4)),
        _row("same speed", "int8-dynamic", 1.7297, 1.02, (0.97, 1.08)),
        _row("busy", "magnitude:sparsity=0.5", 1.7287, disturbed=True),
    ]
    add_ratios(rows, rows[0])
    add_cost_gain(rows, rows[0], 0.01)
    return rows


def _results(rows):
    return {"rows": rows, "model": {"name": "smollm2-135m", "source": "x.gguf",
                                    "baseline": {"name": "float32", "weights": "w", "truly_float": True}},
            "task": TASK, "environment": ENV}


def test_each_verdict_says_what_is_credited_and_why(rows):
    v = {r["name"]: summary.variant_verdict(r) for r in rows[1:]}
    months = 12 * math.log(2.0) / math.log(2.9)  # 7.81 months of the 2.9x/year algorithmic trend
    assert v["int8 weight-only"].startswith("×2.00 tokens per $ (1.90–2.10) at -0.0013 bits per byte (within the +0.01 allowed): "
                                            "a gain at equal quality, worth ")
    assert f"{months:+.1f} months of algorithmic progress" in v["int8 weight-only"] == v["int8 weight-only"]
    assert v["int4 weight-only g32 a8"] == ("×3.10 tokens per $ (2.80–3.40) but +0.0360 bits per byte, above the +0.01 "
                                           "allowed: not credited as a gain at equal quality.")
    assert v["same speed"].startswith("no measurable difference in tokens per $ (×0.97–1.08) at +0.0020 bits per byte")
    assert v["busy"] == "tokens per $ not claimed (this variant had fewer than 5 undisturbed rounds); +0.0010 bits per byte."


def test_headline_is_the_best_credited_gain_or_says_none_is(rows):
    head = summary.best_improvement(rows)
    assert head.startswith("Best improvement: int8 weight-only: ×2.00 tokens per $") and "+7.8 months of algorithmic" in head
    # without int8, the fastest variant is int4, bought with quality: named, not credited
    head = summary.best_improvement([rows[0], rows[2], rows[3]])
    assert head.startswith("No variant is credited with a gain at equal quality. The largest speed-up, int4 weight-only "
                           "g32 a8: ×3.10 tokens per $ (2.80–3.40) but +0.0360 bits per byte")
    assert summary.best_improvement([rows[0], rows[4]]).startswith("No gain can be claimed")


def test_warnings_name_the_disturbed_row_and_the_uncredited_speed_up(rows):
    w = summary.warnings(_results(rows))
    assert len(w) == 2
    assert w[0].startswith("Disturbed measurement") and "for busy;" in w[0] and "no speed ratio, gain or months" in w[0]
    assert w[1].startswith("Not credited: int4 weight-only g32 a8 is ×3.10 tokens per $ but its bits per byte rose by +0.0360")
    rows[0]["speed_disturbed"] = True  # the baseline disturbed: nothing is claimed for any variant
    assert "so no speed ratio, gain or months figure is claimed for any variant" in summary.warnings(_results(rows))[0]


def test_summary_page_top_states_machine_and_puts_warnings_first(rows):
    top = summary.reader_summary(_results(rows))
    what = summary.what_was_measured(_results(rows))
    assert "smollm2-135m, baseline “float32” and 4 variants of it" in what and "Macbeth (test slice) (2,997 bytes, 903 tokens)" in what
    assert "Machine: Test CPU 9000, 2 CPUs, 2 torch threads, torch 2.13.0+cpu." in what
    assert "3 of 28 timed measurements were excluded for a CPU share under 0.90" in what
    assert top.index("What was measured") < top.index("Best improvement") < top.index("role='alert'") < top.index("class='verdicts'")
    assert top.count("[not credited]") == 3 and top.count("[credited]") == 1


def test_summary_when_the_first_variant_has_no_cost_figures(rows):
    """The rule is read from a row that has one: a first variant without cost figures does not crash the page."""
    res = _results(rows)
    first = res["rows"][1]
    first.pop("performance_per_cost")
    top = summary.reader_summary(res)
    assert "bits per byte up by at most +0.01" in top and first["name"] not in top.split("class='verdicts'")[1]


def test_variants_table_has_human_labels_and_ratios_beside_values(rows):
    rows[1]["metrics"]["accuracy"] = {"value": 0.81, "unit": "fraction"}  # a metric the table does not know
    t = html_report.rows_table(rows)
    for label in ("bits per byte", "decode, tokens/s", "cost, $ per 1M decoded tokens", "peak memory (RSS), MB",
                  "Other measures", "accuracy, fraction"):
        assert label in t
    assert "decode_tokens_per_s" not in t and "usd_per_million" not in t
    # value and its paired ratio with interval in one cell; a measurable speed-up shown as better
    assert "<td><span class='val'>60.0</span><span class='ratio better'>×2.00 (1.90–2.10)</span></td>" in t
    assert "no measurable difference (×0.97–1.08)" in t and ">not claimed<" in t
    # kernels and decode path under the table, not in the header
    assert "kernels and decode path: kernel of int8 weight-only; fused decode" in t.split("</table>")[1]


def test_variants_placed_on_the_trend(rows, tmp_path):
    pts = {p["name"]: p for p in plots.months_points(rows)}
    assert set(pts) == {"int8 weight-only", "int4 weight-only g32 a8", "same speed"}  # busy: no factor to place
    # credited: the run's own figure; not credited: what the speed alone would be worth (13 months for 3.1x)
    assert pts["int8 weight-only"]["months"]["algorithmic_efficiency"]["value"] == \
        rows[1]["performance_per_cost"]["months_of_trend"]["algorithmic_efficiency"]["value"]
    assert not pts["int4 weight-only g32 a8"]["credited"]
    assert pts["int4 weight-only g32 a8"]["months"]["algorithmic_efficiency"]["value"] == pytest.approx(
        12 * math.log(3.1) / math.log(2.9))
    assert pts["int4 weight-only g32 a8"]["months"]["llm_price_at_fixed_capability"]["value"] == pytest.approx(
        12 * math.log(3.1) / math.log(42.0))
    png = plots.plot_months_on_trend(tmp_path / "m.png", rows, credit=summary.TRENDS_CREDIT)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Epoch AI, CC-BY 4.0" in summary.TRENDS_CREDIT and "×2.9/year" in summary.TRENDS_CREDIT
    note = summary.months_note(rows)
    assert "moorelab trend months 2 --trend algorithmic_efficiency" in note and "not credited" in note


def test_many_long_variants_fit_1280_pixels_in_chromium(rows, tmp_path, browser_check):
    # eight variants with long names and specs: the page must still fit a 1280-pixel window
    many = rows + [_row(f"int4 weight-only g{g} with a rather long descriptive name", f"int4:group_size={g},activation_bits=8",
                        1.74, 2.5, (2.4, 2.6)) for g in (32, 64, 128, 256)]
    add_ratios(many, many[0])
    add_cost_gain(many, many[0], 0.01)
    res = _results(many)
    fig = plots.plot_months_on_trend(tmp_path / "months_on_trend.png", many, credit=summary.TRENDS_CREDIT)
    fig2 = plots.plot_pareto(tmp_path / "pareto.png", many, credit=summary.measured_credit(res))
    page = html_report.write_report(
        tmp_path / "report.html", "test report",
        [("trend", html_report.figure_row([(fig, "months"), (fig2, "pareto")]) + summary.months_note(many)),
         ("variants", html_report.rows_table(many)), ("gains", html_report.gains_table(many)),
         ("speed protocol", html_report.speed_protocol_table(many)),
         ("environment", html_report.kv_table([("text_source", "/a/very/long/path/" * 12 + "macbeth.md")]))],
        [], summary=summary.reader_summary(res))
    check = browser_check(page)
    assert check.images == 2 and check.page_width <= 1280
