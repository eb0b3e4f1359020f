"""`moorelab improve`: chain checks (fast) and one end-to-end run on SmolLM2 (slow)."""

import json
import subprocess
import sys

import pytest
import torch


def moorelab(*args):
    return subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("spec,needle", [
    ("magnitude:sparsity=1.2", "sparsity=1.2 must be in [0, 1)"),
    ("int4:group_size=40", "group_size=40"),
])
def test_bad_spec_exits_2_and_writes_nothing(tmp_path, spec, needle):
    out = tmp_path / "o"
    p = moorelab("improve", "smollm2-135m", "--with", spec, "--out", str(out))
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


def test_double_quantization_exits_before_loading(tmp_path):
    out = tmp_path / "o"
    p = moorelab("improve", "smollm2-135m", "--with", "int8", "--with", "int4", "--out", str(out))
    assert p.returncode == 2 and "already quantized" in p.stderr
    assert not out.exists()


@pytest.mark.slow
def test_improve_int8_end_to_end(tmp_path, browser_check):
    out = tmp_path / "o"
    p = moorelab("improve", "smollm2-135m", "--with", "int8", "--out", str(out), "--quick", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert [row["name"] for row in r["rows"]] == ["float32 (from Q4_1 GGUF)", "int8"]
    base, q = r["rows"]
    assert q["vs_baseline"]["weight_bytes"]["value"] < 0.5
    assert abs(q["performance_per_cost"]["delta_bits_per_byte"]["value"]) < 0.02
    # the same protocol, decode path and kernel label as `moorelab run`
    assert base["kernel"] == "moorelab fp32 GEMV; torch matmul (prefill); fused decode"
    assert base["speed_protocol"]["rounds"] == 5 and q["speed_protocol"]["measurements"] >= 5
    assert "not an original float32 model" in r["model"]["baseline"]["weights"]
    assert r["gain_rule"]["max_delta_bits_per_byte"]["value"] == 0.01
    assert r["saved_model"]["format"] == "moorelab-improved/1"
    assert (out / "model" / "moorelab.json").is_file() and (out / "pareto.png").stat().st_size > 5000
    from moorelab.improve.save import load_improved

    m = load_improved(out / "model")
    assert any(getattr(x, "scheme", None) == "int8-weight-only" for x in m.modules())
    with torch.no_grad():
        logits = m(torch.tensor([[504, 3458, 282]]))
    assert torch.isfinite(logits).all()
    # its report.html: the reader's summary first, then clean in headless Chromium at 1280 px
    page = (out / "report.html").read_text()
    assert page.index("What was measured.") < page.index("Variants measured on the same text")
    assert "int8</b> <span class=" in page and (out / "months_on_trend.png").is_file()
    assert browser_check(out / "report.html").images == 3


def test_bad_format_exits_2_before_loading(tmp_path):
    out = tmp_path / "o"
    p = moorelab("improve", "smollm2-135m", "--with", "int4", "--format", "onnx", "--out", str(out))
    assert p.returncode == 2 and "--format 'onnx'" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()


@pytest.mark.slow
def test_improve_int4_writes_a_gguf_our_loader_reads_with_the_same_logits(tmp_path):
    out = tmp_path / "o"
    p = moorelab("improve", "smollm2-135m", "--with", "int4:group_size=32", "--format", "gguf", "--out", str(out),
                 "--quick", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    saved = json.loads(p.stdout)["saved_model"]
    assert saved["format"] == "gguf" and saved["types"]["Q4_1"] == 30 * 7 + 1
    assert saved["tokenizer"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    from gguf import GGUFReader

    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.model.load_gguf import load_gguf
    from moorelab.model.zoo import load_pretrained

    r = GGUFReader(str(out / "model.gguf"))
    src = GGUFReader(saved["tokenizer"])
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.merges"):
        assert r.fields[key].contents() == src.fields[key].contents()
    ours = load_gguf(out / "model.gguf")
    ref = load_pretrained("smollm2-135m").model
    apply(ref, parse_spec("int4:group_size=32"), ApplyContext())
    ids = torch.tensor([[504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        assert (ours(ids) - ref(ids)).abs().max().item() < 1e-3
