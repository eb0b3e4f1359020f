"""measure_speed_rows: every row timed by the one protocol, on the fused float32 path, with exactly
one decode figure per row in results.json, and the terminal table showing that same number."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from rich.console import Console

from moorelab import kernels
from moorelab.measure.task import Budget, measure_model, measure_speed_rows
from moorelab.measure.text import Text
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer
from moorelab.report.console import summary_table
from moorelab.report.results import add_cost_gain, add_ratios, write_json

LLAMA = dict(family="llama", vocab_size=61, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=96,
             max_position_embeddings=128, rope_theta=100.0)
BUDGET = Budget(max_chars=1000, window=32, stride=16, prefill_tokens=16, decode_tokens=6, batch_size=2,
                calibration_tokens=0, speed_rounds=5, speed_max_tries=2)


class _Progress:
    def add_task(self, *_a, **_k):
        return 0

    def advance(self, *_a):
        pass

    def update(self, *_a, **_k):
        pass


def _paths(obj, key, prefix=""):
    """Every path in a JSON tree whose last key is ``key``."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else k
            if k == key:
                out.append(p)
            out += _paths(v, key, p)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, key, f"{prefix}[{i}]")
    return out


@pytest.mark.skipif(kernels.get_library() is None, reason=f"compiled kernels unavailable: {kernels.status()}")
def test_rows_have_one_decode_figure_and_the_table_shows_it(tmp_path):
    torch.manual_seed(0)
    base = Transformer(TransformerConfig(**LLAMA)).eval()
    other = copy.deepcopy(base)
    ids = torch.randint(0, 61, (80,), generator=torch.Generator().manual_seed(0)).tolist()
    text = Text(text="x" * 200, source="test", description="test")
    rows = [measure_model(n, t, "k", m, ids, text, BUDGET, 0, _Progress())[0]
            for n, t, m in (("base", "none", base), ("copy", "copy", other))]
    res = measure_speed_rows(rows, [base, other], ids, BUDGET, 0.25, _Progress())
    assert base.last_decode_path == "fused" and other.last_decode_path == "fused"
    add_ratios(rows, rows[0])
    add_cost_gain(rows, rows[0])
    write_json(tmp_path / "r.json", {"rows": rows})
    written = json.loads((tmp_path / "r.json").read_text())["rows"]
    for r, vs in zip(written, res.variants):
        # one decode figure, one place (and its ratio); per-round values are named per round, not as a second figure
        assert _paths(r, "decode_tokens_per_s") == ["metrics.decode_tokens_per_s"] + (
            ["vs_baseline.decode_tokens_per_s"] if r["technique"] != "none" else [])
        assert r["metrics"]["decode_tokens_per_s"]["value"] == pytest.approx(vs.decode_tokens_per_s)
        sp = r["speed_protocol"]
        assert sp["rounds"] == 5 and len(sp["tries"]) == sp["measurements"]
        assert r["metrics"]["usd_per_million_tokens_decode"]["value"] == pytest.approx(
            0.25 / (3600 * r["metrics"]["decode_tokens_per_s"]["value"]) * 1e6)
    console = Console(record=True, width=400)
    console.print(summary_table(written))
    line = next(ln for ln in console.export_text().splitlines() if ln.lstrip("│┃ ").startswith("decode tokens/s"))
    for r in written:
        assert format(r["metrics"]["decode_tokens_per_s"]["value"], ".1f") in line
    v = written[1]["vs_baseline"]["decode_tokens_per_s"]
    assert v["verdict"] in ("higher", "lower", "no measurable difference") or v["verdict"].startswith("not claimed")
