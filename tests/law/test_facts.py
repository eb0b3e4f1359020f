"""Embedded facts table: schema, citations, and cross-check against Epoch AI's table."""

import numpy as np
import pandas as pd
import pytest

from moorelab.errors import DataError
from moorelab.law.facts import FACTS_COLUMNS, FACTS_PATH, fit_facts_compute_trend, load_facts


def test_embedded_table_loads_fully_and_cites_sources():
    df, dropped = load_facts()
    assert dropped == []
    assert len(df) >= 20
    assert set(FACTS_COLUMNS) <= set(df.columns)
    assert df["source"].str.match(r"https://").all()
    assert df["compute_basis"].str.len().gt(0).all()
    assert df["year"].between(2017, 2025).all()
    for name in ["Transformer", "GPT-3 175B (davinci)", "Chinchilla", "PaLM (540B)", "GPT-4",
                 "Llama 2-70B", "Llama 3.1-405B"]:
        assert name in set(df["model"])


def test_facts_compute_trend_is_fast_growth():
    df, _ = load_facts()
    f = fit_facts_compute_trend(df, n_boot=500)
    assert f.n == df["training_compute_flop"].notna().sum()
    # language-model frontier compute grew ~4-10x/yr 2017-2024 (Epoch AI: "as fast as 9x/yr")
    assert 4.0 < f.factor_per_year < 10.0


def test_cross_check_against_epoch(trends_dir):
    epoch = pd.read_csv(trends_dir / "epoch-training-cost-trends" / "All_ML_Systems_-_full_view.csv")
    epoch = epoch.set_index("Model")
    df, _ = load_facts()
    problems = []
    matched = 0
    for _, r in df.iterrows():
        if r["model"] not in epoch.index:
            problems.append(f"{r['model']}: not in Epoch table")
            continue
        e = epoch.loc[r["model"]]
        matched += 1
        days = abs((pd.Timestamp(r["publication_date"]) - pd.Timestamp(e["Publication date"])).days)
        if days > 31:
            problems.append(f"{r['model']}: date off by {days} days")
        for ours, theirs in [("parameters", "Parameters"),
                             ("training_compute_flop", "Training compute (FLOP)")]:
            a, b = r[ours], e[theirs]
            if np.isnan(a) or pd.isna(b):
                if np.isnan(a) != pd.isna(b):
                    problems.append(f"{r['model']}: {ours} {a} vs Epoch {b}")
                continue
            if abs(a / float(b) - 1) > 0.10:
                problems.append(f"{r['model']}: {ours} {a:.3g} vs Epoch {float(b):.3g}")
    assert problems == []
    assert matched == len(df)


def _write(tmp_path, rows, header=",".join(FACTS_COLUMNS)):
    p = tmp_path / "facts.csv"
    p.write_text(header + "\n" + "\n".join(rows) + "\n")
    return p


def test_bad_date_names_file_and_row(tmp_path):
    p = _write(tmp_path, ["A,o,2020-01-01,1e9,1e21,paper,https://x",
                          "B,o,2020-13-01,1e9,1e21,paper,https://x"])
    with pytest.raises(DataError, match=r"facts\.csv row 3, field 'publication_date'"):
        load_facts(p)


def test_missing_column(tmp_path):
    p = _write(tmp_path, ["A,o,2020-01-01,1e9,1e21,paper"],
               header="model,organization,publication_date,parameters,training_compute_flop,"
                      "compute_basis")
    with pytest.raises(DataError, match="missing column.*'source'"):
        load_facts(p)
    # compute_basis is optional in a user-supplied file
    p = _write(tmp_path, ["A,o,2020-01-01,1e9,1e21,https://x"],
               header="model,organization,publication_date,parameters,training_compute_flop,"
                      "source")
    df, dropped = load_facts(p)
    assert list(df["model"]) == ["A"] and dropped == []


def test_bad_values_and_duplicates_are_reported_drops(tmp_path):
    p = _write(tmp_path, [
        "A,o,2020-01-01,1e9,1e21,paper,https://x",
        "B,o,2020-02-01,1e9,0,paper,https://x",
        "C,o,2020-03-01,-5,1e21,paper,https://x",
        "A,o,2020-01-01,1e9,1e21,paper,https://x",
        "D,o,2020-04-01,1e9,1e21,paper,",
        "E,o,2020-05-01,lots,1e21,paper,https://x",
    ])
    df, dropped = load_facts(p)
    assert list(df["model"]) == ["A"]
    reasons = {d.label + "@" + str(d.row): d.reason for d in dropped}
    assert "training_compute_flop <= 0" in reasons["B@3"]
    assert "parameters <= 0" in reasons["C@4"]
    assert reasons["A@5"] == "duplicate of row 2"
    assert "source missing" in reasons["D@6"]
    assert "not a number" in reasons["E@7"]
    assert len(df) + len(dropped) == 6
    with pytest.raises(DataError, match="need >= 3"):
        fit_facts_compute_trend(df)
