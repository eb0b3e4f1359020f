import json
import math

import pytest

from moorelab.measure.row import make_row
from moorelab.report.results import add_ratios, staged_output, write_json


def test_staged_output_moves_files_only_on_success(tmp_path):
    out = tmp_path / "out"
    with staged_output(out) as stage:
        (stage / "results.json").write_text("{}")
    assert (out / "results.json").read_text() == "{}"
    with pytest.raises(RuntimeError):
        with staged_output(out) as stage:
            (stage / "results.json").write_text("half")
            (stage / "report.html").write_text("half")
            raise RuntimeError("boom")
    assert (out / "results.json").read_text() == "{}"
    assert not (out / "report.html").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left


def test_rows_carry_units_and_ratios():
    base = make_row("fp32", "none", "k", {"decode_tokens_per_s": 10.0, "weight_bytes": 400, "cpu_share": 0.99})
    q = make_row("int8", "int8", "k", {"decode_tokens_per_s": 25.0, "weight_bytes": 100, "cpu_share": 0.98})
    paired = {"value": 2.4, "ci": [2.2, 2.6], "confidence": 0.9375, "pairs": 5, "verdict": "higher", "method": "paired"}
    q["vs_baseline"] = {"decode_tokens_per_s": paired}  # as measure_speed_rows leaves it
    add_ratios([base, q], base)
    assert q["metrics"]["decode_tokens_per_s"] == {"value": 25.0, "unit": "tokens/s"}
    # the paired speed ratio is kept (not replaced by 25/10); other figures get their plain ratio;
    # the CPU share, a property of the measurement, gets none; the baseline gets no ratios
    assert q["vs_baseline"] == {"decode_tokens_per_s": paired,
                                "weight_bytes": {"value": 0.25, "unit": "x baseline", "method": "ratio of the two figures"}}
    assert "vs_baseline" not in base


def test_json_is_strict(tmp_path):
    p = tmp_path / "r.json"
    write_json(p, {"a": math.nan, "b": [math.inf, 1.0]})
    assert json.loads(p.read_text()) == {"a": None, "b": [None, 1.0]}


def _gain_rows(ratio, ci, delta_bpb, verdict="higher"):
    base = make_row("fp32", "none", "k", {"usd_per_million_tokens_decode": 2.4, "bits_per_byte": 1.0})
    q = make_row("q", "int8", "k", {"usd_per_million_tokens_decode": 2.4 / (ratio or 1), "bits_per_byte": 1.0 + delta_bpb})
    q["vs_baseline"] = {"decode_tokens_per_s": {"value": ratio, "ci": ci, "confidence": 0.9375 if ci else None,
                                                "pairs": 5, "verdict": verdict}}
    return base, q


def test_cost_gain_credited_only_at_equal_quality_and_when_measurable():
    from moorelab.report.results import DEFAULT_MAX_DELTA_BITS_PER_BYTE, add_cost_gain

    assert DEFAULT_MAX_DELTA_BITS_PER_BYTE == 0.01
    base, q = _gain_rows(2.4, [2.2, 2.6], 0.005)
    add_cost_gain([base, q], base)
    pc = q["performance_per_cost"]
    assert pc["gain_vs_baseline"]["value"] == pytest.approx(2.4) and pc["gain_vs_baseline"]["ci"] == [2.2, 2.6]
    assert pc["delta_bits_per_byte"]["value"] == pytest.approx(0.005)
    assert pc["credited"] and pc["verdict"] == "gain at equal quality"
    # 12 ln 2.4 / ln 2.9 months of the 2.90x/yr algorithmic-efficiency trend, and the command that reproduces it
    m = pc["months_of_trend"]["algorithmic_efficiency"]
    assert m["value"] == pytest.approx(9.867, abs=1e-3)
    assert m["command"] == "moorelab trend months 2.4 --trend algorithmic_efficiency"
    assert "performance_per_cost" not in base
    # a pruned model with perplexity x1.97 (+0.26 bits/byte) is faster, but not at equal quality
    base, q = _gain_rows(1.24, [1.1, 1.4], 0.26)
    add_cost_gain([base, q], base)
    pc = q["performance_per_cost"]
    assert not pc["credited"] and pc["months_of_trend"] is None
    assert pc["verdict"] == "no gain at equal quality: bits per byte +0.2600 exceeds the +0.01 allowed"
    # int4 g32 (+0.036) passes only under a looser, stated rule
    base, q = _gain_rows(2.8, [2.6, 3.0], 0.036)
    add_cost_gain([base, q], base, max_delta_bits_per_byte=0.05)
    assert q["performance_per_cost"]["credited"] and q["performance_per_cost"]["quality_rule"]["max_delta_bits_per_byte"] == 0.05
    # an interval containing 1: no measurable difference, no months
    base, q = _gain_rows(1.05, [0.93, 1.12], 0.0, verdict="no measurable difference")
    add_cost_gain([base, q], base)
    assert q["performance_per_cost"]["verdict"] == "no measurable difference in tokens per $"
    assert q["performance_per_cost"]["months_of_trend"] is None
    # a disturbed row claims nothing
    base, q = _gain_rows(None, None, 0.0, verdict="not claimed: this variant had fewer than 5 undisturbed rounds")
    add_cost_gain([base, q], base)
    assert q["performance_per_cost"]["verdict"].startswith("not claimed") and not q["performance_per_cost"]["credited"]
    # a measurable loss at equal quality is credited as a loss: negative months
    base, q = _gain_rows(1 / 2.9, [0.3, 0.4], 0.0, verdict="lower")
    add_cost_gain([base, q], base)
    assert q["performance_per_cost"]["verdict"] == "loss at equal quality"
    assert q["performance_per_cost"]["months_of_trend"]["algorithmic_efficiency"]["value"] == pytest.approx(-12.0)


def test_pareto_front_by_hand():
    from moorelab.report.plots import pareto_front

    pts = [(1.0, 3.0), (2.0, 2.0), (3.0, 2.5), (2.0, 4.0), (4.0, 1.0)]
    assert pareto_front(pts) == [0, 1, 4]


def test_out_that_is_a_file_fails_before_work(tmp_path):
    from moorelab.errors import MoorelabError

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(MoorelabError, match="exists and is not a folder"):
        with staged_output(f):
            raise AssertionError("must not run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
