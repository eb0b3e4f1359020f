"""The batched-decode curve of `moorelab run` is drawn from its results.json points."""

from moorelab.report.plots import plot_batched_decode


def test_plot_batched_decode_writes_a_png(tmp_path):
    pts = [{"batch": b, "decode_tokens_per_s": {"value": 40.0 * b ** 0.7, "unit": "tokens/s"},
            "usd_per_million_tokens": {"value": 0.7 / b ** 0.7, "unit": "$/1M tokens"}} for b in (1, 4, 16)]
    out = plot_batched_decode(tmp_path / "b.png", pts)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
