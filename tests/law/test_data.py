"""Loaders: schema checks, strict dates, row accounting, on the public files and bad inputs."""

import numpy as np
import pytest

from moorelab.errors import DataError
from moorelab.law import data as D
from moorelab.law.fit import fit_growth


@pytest.mark.parametrize("loader, n_rows", [
    (D.load_notable_models, 1892), (D.load_chips, 5775), (D.load_hardware_prices, 591),
    (D.load_llm_prices, 38 + 35), (D.load_capabilities_index, 498),
    (D.load_chinchilla_points, 245),
])
def test_public_files_load_with_every_row_accounted(trends_dir, loader, n_rows):
    t = loader(trends_dir)
    assert t.n_input == n_rows  # the row counts stated in SOURCES.md
    assert len(t.frame) + len(t.dropped) == n_rows
    assert all(d.reason for d in t.dropped)


def test_snapshots(trends_dir):
    assert D.load_notable_models(trends_dir, snapshot="2024-10").n_input == 1755
    assert "Model" in D.load_notable_models(trends_dir, snapshot="2024-10").frame.columns
    assert D.load_capabilities_index(trends_dir, snapshot="2025-11").n_input == 426
    with pytest.raises(DataError, match="unknown snapshot"):
        D.load_notable_models(trends_dir, snapshot="1999")


def test_specific_values(trends_dir):
    chips = D.load_chips(trends_dir).frame
    price = chips["Release price (USD)"]
    assert price.dtype == float and (price.dropna() > 0).all()  # "$5412.00" parsed
    chin = D.load_chinchilla_points(trends_dir).frame
    r = chin.iloc[0]
    assert r["tokens"] == pytest.approx(r["Training FLOP"] / (6 * r["Model Size"]))
    hp = D.load_hardware_prices(trends_dir)
    assert any(d.reason.startswith("duplicate of row") for d in hp.dropped)


def test_missing_file_points_to_fetch(tmp_path):
    with pytest.raises(DataError, match="moorelab data fetch notable-models"):
        D.load_notable_models(tmp_path)


def _write(tmp_path, text, name="t.csv"):
    p = tmp_path / "epoch-chinchilla-replication"
    p.mkdir(parents=True, exist_ok=True)
    f = p / name
    f.write_text(text)
    return f


def test_missing_column_named(tmp_path):
    _write(tmp_path, "Model Size,loss\n1,2\n", "svg_extracted_data.csv")
    with pytest.raises(DataError, match="missing column.*'Training FLOP'"):
        D.load_chinchilla_points(tmp_path)


def test_bad_rows_in_chinchilla_are_reported(tmp_path):
    _write(tmp_path, "Model Size,Training FLOP,loss\n1e9,1e20,3.0\n0,1e20,3.0\n1e9,abc,3\n"
                     "1e9,1e20,3.0\n", "svg_extracted_data.csv")
    t = D.load_chinchilla_points(tmp_path)
    assert len(t.frame) == 1
    reasons = sorted((d.row, d.reason) for d in t.dropped)
    assert reasons[0][0] == 3 and "<= 0" in reasons[0][1]
    assert reasons[1] == (4, "Training FLOP not a number ('abc')")
    assert reasons[2] == (5, "duplicate of row 2")


def test_points_from_arrays_drops_and_errors():
    p = D.TrendPoints.from_arrays(["a", "b", "c", "d", "e", "a"],
                                  ["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01",
                                   "2020-05-01", "2020-01-01"],
                                  [1.0, 0.0, -2.0, None, "x", 1.0])
    assert list(p.label) == ["a"]
    r = {d.label: d.reason for d in p.dropped}
    assert "unusable on a log scale" in r["b"] and "unusable on a log scale" in r["c"]
    assert r["d"] == "value missing"
    assert "not a number" in r["e"]
    assert r["a"] == "duplicate of row 0"
    p.check_accounting()
    with pytest.raises(DataError, match="at least 3"):
        fit_growth(p.year, p.value)
    with pytest.raises(DataError, match=r"row 1, field 'date'.*'2020-13-01'"):
        D.TrendPoints.from_arrays(["a", "b"], ["2020-01-01", "2020-13-01"], [1, 2])


def test_bad_date_in_public_layout_names_row(tmp_path):
    d = tmp_path / "epoch-training-cost-trends"
    d.mkdir()
    cols = "Model,Organization,Publication date,Notability criteria,Parameters," \
           "Training compute (FLOP),Domain"
    (d / "All_ML_Systems_-_full_view.csv").write_text(
        cols + "\nA,o,2020-01-01,SOTA,1,1e20,Language\nB,o,01/02/2020,SOTA,1,1e20,Language\n")
    with pytest.raises(DataError, match=r"row 3, field 'Publication date'.*'01/02/2020'"):
        D.load_notable_models(tmp_path)


def test_to_number():
    assert D.to_number("$5,412.00") == 5412.0
    assert np.isnan(D.to_number(""))
    with pytest.raises(ValueError):
        D.to_number("n/a-ish")
