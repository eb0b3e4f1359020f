"""report.html pieces that read results.json: the accuracy table and empty sections."""

from __future__ import annotations

from moorelab.report import html as html_report


def _acc(v, lo, hi):
    return {"value": v, "stderr": 0.1, "ci95": [lo, hi]}


def test_accuracy_table_shows_each_row_its_intervals_and_the_subset():
    rows = [
        {"name": "float32", "accuracy": {"subset": "the first 16 of 400 items of hamlet-cloze", "chance": 0.25,
                                         "acc": _acc(0.3125, 0.1417, 0.5560), "acc_norm": _acc(0.5, 0.28, 0.72)}},
        {"name": "int4 <g32>", "accuracy": {"skipped": "task data missing"}},
        {"name": "no accuracy"},
    ]
    out = html_report.accuracy_table(rows)
    assert "0.312 (0.142–0.556)" in out and "0.500 (0.280–0.720)" in out
    assert "the first 16 of 400 items of hamlet-cloze; chance 0.25" in out
    assert "int4 &lt;g32&gt;" in out and "skipped: task data missing" in out  # escaped, named
    assert "no accuracy" not in out
    assert html_report.accuracy_table([{"name": "a"}]) == ""


def test_empty_section_is_left_out(tmp_path):
    page = tmp_path / "r.html"
    html_report.write_report(page, "t", [("Shown", "<p>x</p>"), ("Zero-shot accuracy", "")], [])
    text = page.read_text()
    assert "<h2>Shown</h2>" in text and "Zero-shot accuracy" not in text
