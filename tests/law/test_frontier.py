"""Frontier selection (running records, top-k) and windows: hand-built cases, tie rule."""

import numpy as np
import pytest

from moorelab.errors import DataError
from moorelab.law.data import TrendPoints
from moorelab.law.frontier import running_record_frontier, top_k_frontier, window


def pts(rows):
    labels, dates, values = zip(*rows)
    return TrendPoints.from_arrays(labels, dates, values, unit="FLOP")


def test_running_records_and_tie_rule():
    p = pts([
        ("a", "2020-01-01", 10.0),
        ("b", "2020-06-01", 5.0),    # below record a
        ("c", "2021-01-01", 10.0),   # equals record a: not a record (strictly better needed)
        ("d", "2021-06-01", 20.0),   # record
        ("e", "2022-01-01", 30.0),   # same date as f, f is higher -> f is the record
        ("f", "2022-01-01", 40.0),
        ("g", "2022-01-01", 40.0),   # equal to f on the same date: first in source order wins
        ("h", "2019-01-01", 1.0),    # earliest: first record (input order does not matter)
    ])
    fr = running_record_frontier(p)
    assert list(fr.label) == ["a", "d", "f", "h"]  # kept in original order
    assert sorted(fr.label, key=lambda s: fr.year[list(fr.label).index(s)]) == ["h", "a", "d", "f"]
    reasons = {d.label: d.reason for d in fr.dropped}
    assert "does not exceed a" in reasons["b"]
    assert "does not exceed a" in reasons["c"]
    assert "same-date point f" in reasons["e"]
    assert "same-date point f" in reasons["g"]
    assert fr.n + len(fr.dropped) == fr.n_input == 8
    fr.check_accounting()


def test_running_min_for_prices():
    p = pts([("a", "2020-01-01", 10.0), ("b", "2021-01-01", 12.0), ("c", "2022-01-01", 3.0)])
    fr = running_record_frontier(p, higher_is_better=False)
    assert list(fr.label) == ["a", "c"]
    assert "does not undercut a" in fr.dropped[0].reason


def test_top_k():
    p = pts([("a", "2020-01-01", 10.0), ("b", "2020-02-01", 5.0), ("c", "2020-03-01", 7.0),
             ("d", "2020-04-01", 1.0)])
    top2 = top_k_frontier(p, 2)
    # b: 1 better (a) -> kept; c: 1 better (a) -> kept; d: 3 better -> dropped
    assert list(top2.label) == ["a", "b", "c"]
    assert "3 earlier points better" in top2.dropped[0].reason
    with pytest.raises(DataError):
        top_k_frontier(p, 0)


def test_window_bounds_and_reasons():
    p = pts([("a", "2009-12-31", 1.0), ("b", "2010-01-01", 2.0), ("c", "2023-12-31", 3.0),
             ("d", "2024-01-01", 4.0)])
    w = window(p, "2010-01-01", "2024-01-01")
    assert list(w.label) == ["b", "c"]  # start inclusive, end exclusive
    reasons = {d.label: d.reason for d in w.dropped}
    assert reasons == {"a": "before window start 2010-01-01",
                       "d": "on or after window end 2024-01-01"}
    assert window(p, None, "2010-01-01").label.tolist() == ["a"]
    with pytest.raises(DataError, match="not after"):
        window(p, "2020-01-01", "2019-01-01")
    with pytest.raises(DataError, match="field 'start'"):
        window(p, "2020/01/01")
