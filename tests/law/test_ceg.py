"""Compute-equivalent gain: the inversion on the baseline's curve, the seed noise, the intervals
and the doubling time, each against hand-computed values."""

import math

import pytest

from moorelab.errors import DataError
from moorelab.law.ceg import (
    compute_equivalent_gain,
    factor_per_year_to_months,
    fit_loss_curve,
    ladder_ceg,
    published_algorithmic_progress,
    seed_noise,
)


def test_loss_curve_and_inversion_golden():
    # two points: the loss halves over a decade of compute -> slope log10(1/2) = -0.30103
    curve = fit_loss_curve([1e12, 1e13], [4.0, 2.0])
    assert curve.slope == pytest.approx(-math.log10(2))
    assert curve.intercept == pytest.approx(math.log10(4) + 12 * math.log10(2))
    # loss 4/sqrt(2) sits half a decade along: the baseline needs 10^12.5 -> CEG at 1e12 = sqrt(10)
    g = compute_equivalent_gain(curve, 1e12, 4 / math.sqrt(2))
    assert g["ceg"] == pytest.approx(math.sqrt(10))
    assert g["baseline_compute"] == pytest.approx(10**12.5)
    assert g["extrapolated"] is False
    # the baseline's own point: CEG 1, inside the range
    assert compute_equivalent_gain(curve, 1e12, 4.0) == {"ceg": pytest.approx(1.0), "baseline_compute": pytest.approx(1e12),
                                                         "extrapolated": False}
    # loss 1 needs 1e14, a decade past the largest budget: CEG 10 at 1e13, flagged
    g = compute_equivalent_gain(curve, 1e13, 1.0)
    assert g["ceg"] == pytest.approx(10.0) and g["extrapolated"] is True
    # a worse recipe: loss 4 at 1e13 -> needs 1e12 -> CEG 0.1
    assert compute_equivalent_gain(curve, 1e13, 4.0)["ceg"] == pytest.approx(0.1)


def test_loss_curve_refuses_what_cannot_be_inverted():
    with pytest.raises(DataError, match="does not fall"):
        fit_loss_curve([1e12, 1e13], [2.0, 2.5])
    with pytest.raises(DataError, match="two different"):
        fit_loss_curve([1e12, 1e12], [2.0, 2.5])
    with pytest.raises(DataError, match="loss must be finite"):
        fit_loss_curve([1e12, 1e13], [2.0, float("nan")])


def test_seed_noise_golden():
    # log10 losses 1 and 2: mean 1.5, squares 0.25 + 0.25 = 0.5 over 1 dof; with a second
    # group [1, 1] (0 over 1 dof): pooled 0.5 / 2 -> sd 0.5
    assert seed_noise({("a", 1.0): [10.0, 100.0]})["sd_log10"] == pytest.approx(math.sqrt(0.5))
    n = seed_noise({("a", 1.0): [10.0, 100.0], ("b", 1.0): [1.0, 1.0], ("c", 2.0): [3.0]})
    assert n["sd_log10"] == pytest.approx(0.5) and n["dof"] == 2 and n["groups"] == 2
    with pytest.raises(DataError, match="two or more seeds"):
        seed_noise({("a", 1.0): [10.0], ("a", 2.0): [5.0]})


def _base(c):
    return 4.0 * (c / 1e12) ** -math.log10(2)  # loss halves per decade of compute


def test_ladder_ceg_and_doubling_time_golden():
    budgets = [1e12, 10**12.5, 1e13]
    runs = [{"recipe": "base", "compute": c, "seed": 0, "loss": _base(c)} for c in budgets[1:]]
    # two seeds at the smallest budget, +-1%: geometric mean exactly the curve
    runs += [{"recipe": "base", "compute": 1e12, "seed": s, "loss": 4.0 * f} for s, f in ((0, 1.01), (1, 1 / 1.01))]
    # "b" needs half the compute of the baseline everywhere (CEG 2), "c" a quarter (CEG 4)
    runs += [{"recipe": "b", "compute": c, "seed": 0, "loss": _base(2 * c)} for c in budgets]
    runs += [{"recipe": "c", "compute": c, "seed": 0, "loss": _base(4 * c)} for c in budgets]
    res = ladder_ceg(runs, {"base": 2017.0, "b": 2019.0, "c": 2021.0}, "base", n_boot=500)
    assert res.noise["sd_log10"] == pytest.approx(math.sqrt(2) * math.log10(1.01))
    by = {(p["recipe"], p["compute"]["value"]): p for p in res.points}
    assert by[("b", 1e12)]["ceg"] == pytest.approx(2.0) and not by[("b", 1e12)]["extrapolated"]
    assert by[("b", 1e13)]["ceg"] == pytest.approx(2.0) and by[("b", 1e13)]["extrapolated"]  # needs 2e13
    assert by[("c", 1e12)]["ceg"] == pytest.approx(4.0)
    lo, hi = by[("c", 1e12)]["ci"]
    assert lo < 4.0 < hi and hi / lo < 1.5  # 1% noise: a narrow interval
    rec = {r["recipe"]: r for r in res.recipes}
    assert rec["base"]["ceg"] == pytest.approx(1.0)
    assert rec["c"]["ceg"] == pytest.approx(4.0) and rec["c"]["extrapolated"]
    # log10 CEG rises by log10(2) every 2 years: doubling time 24 months, a perfect line
    assert res.fit.doubling_time_months == pytest.approx(24.0)
    assert res.fit.r_squared == pytest.approx(1.0)
    lo, hi = res.doubling_ci_noise
    assert lo < 24.0 < hi
    d = res.to_dict()
    assert d["doubling_time_fit"]["doubling_time"]["value"] == pytest.approx(24.0)
    assert d["notes"] == []


def test_ladder_without_progress_says_so():
    budgets = [1e12, 1e13, 1e14]
    runs = [{"recipe": "base", "compute": c, "seed": s, "loss": _base(c) * (1.01 if s else 1)}
            for c in budgets for s in (0, 1)]
    runs += [{"recipe": "b", "compute": c, "seed": 0, "loss": _base(c / 2)} for c in budgets]   # CEG 1/2
    runs += [{"recipe": "c", "compute": c, "seed": 0, "loss": _base(c / 4)} for c in budgets]   # CEG 1/4
    res = ladder_ceg(runs, {"base": 2017.0, "b": 2019.0, "c": 2021.0}, "base", n_boot=200)
    assert res.fit.time_kind == "halving"
    assert any("no algorithmic progress" in n for n in res.notes)
    with pytest.raises(DataError, match="no date"):
        ladder_ceg(runs, {"base": 2017.0, "b": 2019.0}, "base")
    with pytest.raises(DataError, match="no runs of the baseline"):
        ladder_ceg(runs, {"base": 2017.0, "b": 2019.0, "c": 2021.0}, "x")


def test_published_rates():
    pub = {p["name"]: p for p in published_algorithmic_progress()}
    assert pub["Ho et al. 2024"]["doubling_months"] == 8.0 and pub["Ho et al. 2024"]["ci"] == [5.0, 14.0]
    # x2.90/year -> 12 ln2 / ln 2.9 = 7.81 months
    assert pub["Epoch capabilities index"]["doubling_months"] == pytest.approx(7.81, abs=0.01)
    assert factor_per_year_to_months(2.0) == pytest.approx(12.0)
    # < 10x in 11 years -> doubling time >= 11 * 12 * log10(2) = 39.7 months
    g = pub["Gundlach et al. 2025 (small-scale ablations)"]
    assert g["doubling_months"] == pytest.approx(39.74, abs=0.01) and g["bound"] == "lower"
