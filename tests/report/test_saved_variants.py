"""Saved `moorelab improve` results come back: `run --model DIR`, `improve DIR` and
`explain attention --model DIR` accept the folder (a tiny LLaMA model with its own byte-level BPE
tokenizer, so each command runs in seconds)."""

import json
import subprocess
import sys

import pytest
import torch


def moorelab(*args):
    return subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A Hugging Face llama folder: config.json, model.safetensors, tokenizer.json (309 tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from moorelab.model.config import TransformerConfig
    from moorelab.model.load_hf import save_hf_llama_folder
    from moorelab.model.transformer import Transformer

    out = tmp_path_factory.mktemp("tiny") / "tiny"
    out.mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(["The quick brown fox jumps over the lazy dog. " * 50,
                             "To be, or not to be, that is the question."], trainer)
    tok.save(str(out / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=tok.get_vocab_size(), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                            head_dim=16, d_ff=128, max_position_embeddings=512, bos_token_id=0, eos_token_id=0)
    save_hf_llama_folder(Transformer(cfg).eval(), out)
    return out


@pytest.fixture(scope="module")
def int4_dir(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("improve") / "o"
    p = moorelab("improve", str(tiny_dir), "--with", "int4:group_size=32", "--quick", "--json", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["saved_model"]["format"] == "moorelab-improved/1"
    assert sorted(f.name for f in (out / "model").iterdir()) == ["model.safetensors", "moorelab.json", "tokenizer.json"]
    return out / "model"


def test_run_measures_a_saved_quantized_variant(int4_dir, tmp_path):
    out = tmp_path / "run"
    p = moorelab("run", "--model", str(int4_dir), "--quick", "--out", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((out / "results.json").read_text())
    assert [row["name"] for row in r["rows"]] == ["saved int4:group_size=32"]
    assert "int4-g32" in r["rows"][0]["kernel"]
    assert r["model"]["techniques_saved_with_it"] == ["int4:group_size=32"]
    parity = r["model"]["parity_max_abs_logit_diff_vs_transformers"]
    assert parity["value"] is None and "moorelab's own format" in parity["note"]
    # the default improvements cannot apply to a quantized model: each is named with its reason
    assert [s["spec"] for s in r["skipped_variants"]] == ["int8", "int4:group_size=32,activation_bits=8", "ffn:fraction=0.25"]
    assert all("already quantized (int4-weight-only)" in s["reason"] for s in r["skipped_variants"])
    assert "skipped" in p.stdout


def test_improve_refuses_to_quantize_a_saved_quantized_variant(int4_dir, tmp_path):
    out = tmp_path / "o2"
    p = moorelab("improve", str(int4_dir), "--with", "int8", "--quick", "--out", str(out))
    assert p.returncode == 2 and "the model is already quantized (int4-weight-only)" in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr and not out.exists()


def test_explain_attention_on_a_saved_variant(int4_dir, tmp_path):
    png = tmp_path / "heat.png"
    p = moorelab("explain", "attention", "--model", str(int4_dir), "--text", "To be, or not to be", "--out", str(png))
    assert p.returncode == 0, p.stderr[-2000:]
    assert png.stat().st_size > 5000 and "layer 0, head 0" in p.stdout


def test_head_pruned_variant_round_trip(tiny_dir, tmp_path):
    """Named heads, saved with per-layer shapes; `run` measures it with every default variant;
    a second `improve` round naming a head already gone is refused, one naming a remaining head works."""
    o1 = tmp_path / "o1"
    p = moorelab("improve", str(tiny_dir), "--with", "heads:remove=0:2+3", "--quick", "--out", str(o1))
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.loads((o1 / "model" / "moorelab.json").read_text())
    assert meta["weights"] == "moorelab" and meta["techniques"] == ["heads:remove=0:2+3"]
    assert meta["layout"]["layers"][0]["heads"] == [0, 1] and meta["layout"]["layers"][0]["heads_removed"] == [2, 3]
    assert "heads" not in meta["layout"]["layers"][1]  # untouched layer: no map

    run = tmp_path / "run"
    p = moorelab("run", "--model", str(o1 / "model"), "--quick", "--out", str(run))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((run / "results.json").read_text())
    assert len(r["rows"]) == 4 and r["skipped_variants"] == []
    # the baseline named as what it is; the int4 row's report of it may follow ("; measured: ...")
    assert r["rows"][0]["notes"].split("; measured: ")[0] == "saved by moorelab improve: heads:remove=0:2+3"

    png = tmp_path / "h.png"
    p = moorelab("explain", "attention", "--model", str(o1 / "model"), "--layer", "1", "--head", "3", "--out", str(png))
    assert p.returncode == 0 and png.is_file() and "head 3 was" not in p.stdout  # layer 1 was not pruned
    p = moorelab("explain", "attention", "--model", str(o1 / "model"), "--layer", "0", "--head", "1", "--out", str(png))
    assert p.returncode == 0 and "head 1 was head 1 of the original model (removed there: [2, 3])" in p.stdout

    gone = moorelab("improve", str(o1 / "model"), "--with", "heads:remove=0:3", "--quick", "--out", str(tmp_path / "x"))
    assert gone.returncode == 2 and "head 3 of layer 0 was already removed by an earlier pruning" in gone.stderr
    assert not (tmp_path / "x").exists()
    o2 = tmp_path / "o2"
    p = moorelab("improve", str(o1 / "model"), "--with", "heads:remove=1:0+1", "--quick", "--out", str(o2))
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.loads((o2 / "model" / "moorelab.json").read_text())
    assert meta["techniques"] == ["heads:remove=0:2+3", "heads:remove=1:0+1"]
    assert meta["weights"] == "huggingface"  # both layers now have 2 heads in 1 group: transformers' format
    assert [L["heads"] for L in meta["layout"]["layers"]] == [[0, 1], [2, 3]]
