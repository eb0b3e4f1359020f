from rich.console import Console

from moorelab.measure.row import make_row
from moorelab.report.console import print_gains
from moorelab.report.results import add_cost_gain, flag_disturbed


def test_gains_print_both_trends_and_flag_rows_decoded_under_cpu_contention():
    def row(name, cost, share):
        return make_row(name, "none" if name == "base" else "x", "k",
                        {"bits_per_byte": 1.0, "usd_per_million_tokens_decode": cost, "decode_cpu_share": share})

    rows = [row("base", 0.29, 0.97), row("fast", 0.1, 0.95), row("disturbed", 0.58, 0.41)]
    add_cost_gain(rows, rows[0])
    flag_disturbed(rows)
    assert [r["speed_disturbed"] for r in rows] == [False, False, True]
    console = Console(record=True, width=300)
    print_gains(console, rows)
    out = console.export_text()
    assert "fast: ×2.90 tokens per $" in out and "+12.0 months of algorithmic efficiency" in out
    assert "LLM price at fixed capability" in out and "(2.9x/year, 90% CI +9.2 to +17.0)" in out  # 12·ln 2.9 / ln(3.98 or 2.12)
    assert "disturbed: ×0.50" in out and "-7.8 months of algorithmic efficiency" in out
    assert "warning" in out and "disturbed (41%)" in out and "fast (" not in out and "not comparable" in out
    # a disturbed baseline invalidates every gain
    rows[0]["metrics"]["decode_cpu_share"]["value"] = 0.6
    flag_disturbed(rows)
    console = Console(record=True, width=300)
    print_gains(console, rows)
    assert "every gain and months figure above is invalid" in console.export_text()
