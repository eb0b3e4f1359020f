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
    base = make_row("fp32", "none", "k", {"decode_tokens_per_s": 10.0, "weight_bytes": 400})
    q = make_row("int8", "int8", "k", {"decode_tokens_per_s": 25.0, "weight_bytes": 100})
    add_ratios([base, q], base)
    assert q["metrics"]["decode_tokens_per_s"] == {"value": 25.0, "unit": "tokens/s"}
    assert q["vs_baseline"] == {"decode_tokens_per_s": 2.5, "weight_bytes": 0.25}


def test_json_is_strict(tmp_path):
    p = tmp_path / "r.json"
    write_json(p, {"a": math.nan, "b": [math.inf, 1.0]})
    assert json.loads(p.read_text()) == {"a": None, "b": [None, 1.0]}


def test_cost_gain_in_months_of_trend():
    from moorelab.report.results import add_cost_gain

    base = make_row("fp32", "none", "k", {"usd_per_million_tokens_decode": 2.4, "bits_per_byte": 1.0})
    q = make_row("int8", "int8", "k", {"usd_per_million_tokens_decode": 1.0, "bits_per_byte": 1.01})
    add_cost_gain([base, q], base)
    pc = q["performance_per_cost"]
    assert pc["gain_vs_baseline"]["value"] == pytest.approx(2.4)
    assert pc["delta_bits_per_byte"]["value"] == pytest.approx(0.01)
    # 12 ln 2.4 / ln 2.9 months of the 2.90x/yr algorithmic-efficiency trend
    assert pc["months_of_trend"]["algorithmic_efficiency"]["value"] == pytest.approx(9.867, abs=1e-3)
    assert "performance_per_cost" not in base


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
