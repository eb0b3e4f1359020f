"""Improved models survive save/load: same logits, right format, transformers loads dense ones."""

import json

import pytest
import torch

from moorelab.errors import ModelLoadError
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
