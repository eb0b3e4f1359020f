"""GGUF out (`moorelab improve --format gguf`): layout llama.cpp expects, read back by the `gguf`
package and by our own loader with the in-memory variant's logits. No llama.cpp binary needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moorelab.errors import MoorelabError
from moorelab.improve.api import ApplyContext, apply, parse_spec
from moorelab.improve.gguf_out import int4_to_q4_1, tokenizer_source, why_not_gguf, write_gguf
from moorelab.model.config import TransformerConfig
from moorelab.model.load_gguf import load_gguf, unpermute_rope_rows
from moorelab.model.transformer import Transformer

IDS = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(1))


def tiny(seed=0, tied=True):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=50, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                            d_ff=128, max_position_embeddings=64, tie_word_embeddings=tied, rope_theta=5000.0,
                            norm_eps=1e-5, bos_token_id=1, eos_token_ids=[2])
    m = Transformer(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    return m


def variant(spec, tied=True):
    m = tiny(tied=tied)
    if spec:
        apply(m, parse_spec(spec), ApplyContext())
    return m


def tok_source(path):
    """A GGUF holding only tokenizer metadata, as llama.cpp's converter writes it."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([f"t{i}" for i in range(50)])
    w.add_token_types([1] * 48 + [3, 3])
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def logits(m):
    with torch.no_grad():
        return m(IDS)


def test_float_model_round_trips_bit_for_bit_with_llama_cpp_names(tmp_path):
    from gguf import GGUFReader

    m = variant(None)
    info = write_gguf(m, tmp_path / "f32.gguf", tokenizer_gguf=tok_source(tmp_path / "tok.gguf"))
    assert info["types"] == {"F32": 2 * 9 + 2} and info["file_type"] == "ALL_F32"
    r = GGUFReader(str(tmp_path / "f32.gguf"))
    tensors = {t.name: t for t in r.tensors}
    # tied embeddings: no output.weight, llama.cpp reuses token_embd
    assert "output.weight" not in tensors
    assert sorted(n for n in tensors if n.startswith("blk.0.")) == sorted(
        f"blk.0.{k}.weight" for k in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down",
                                      "attn_norm", "ffn_norm"))
    # GGUF shapes are fastest-first: [out, in] matrices appear as (in, out)
    assert list(tensors["blk.1.attn_k.weight"].shape) == [64, 32]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
    assert list(tensors["token_embd.weight"].shape) == [64, 50]
    # attn_q rows are stored in llama.cpp's interleaved RoPE order
    q = np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(64, 64)
    assert np.array_equal(unpermute_rope_rows(q, 4), m.blocks[0].attn.q_proj.weight.detach().numpy())
    assert not np.array_equal(q, m.blocks[0].attn.q_proj.weight.detach().numpy())
    f = r.fields
    assert f["llama.attention.head_count"].contents() == 4 and f["llama.attention.head_count_kv"].contents() == 2
    assert f["llama.feed_forward_length"].contents() == 128 and f["llama.rope.freq_base"].contents() == 5000.0
    # tokenizer metadata copied, values and types
    assert f["tokenizer.ggml.model"].contents() == "gpt2" and f["tokenizer.ggml.pre"].contents() == "smollm"
    assert f["tokenizer.ggml.tokens"].contents()[:3] == ["t0", "t1", "t2"]
    assert f["tokenizer.ggml.token_type"].contents()[-2:] == [3, 3]
    assert f["tokenizer.ggml.merges"].contents() == ["t 1", "t 2"]
    assert f["tokenizer.ggml.bos_token_id"].contents() == 1
    back = load_gguf(tmp_path / "f32.gguf")
    assert back.config.tie_word_embeddings and back.config.bos_token_id == 1
    assert torch.equal(logits(back), logits(m))


@pytest.mark.parametrize("spec", ["int4:group_size=32", "int4:group_size=64", "int4:group_size=32,activation_bits=8"])
def test_int4_is_written_as_q4_1_and_loads_with_equal_logits(tmp_path, spec):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    m = variant(spec)
    info = write_gguf(m, tmp_path / "q.gguf")
    # 7 linears per layer and the lm_head (quantized on its own copy) are Q4_1; embedding and norms F32
    assert info["types"] == {"F32": 1 + 2 * 2 + 1, "Q4_1": 2 * 7 + 1} and info["file_type"] == "MOSTLY_Q4_1"
    assert info["tokenizer"] is None and "refuse" in info["note"]
    r = GGUFReader(str(tmp_path / "q.gguf"))
    t = {x.name: x for x in r.tensors}
    assert t["output.weight"].tensor_type.name == "Q4_1" and t["token_embd.weight"].tensor_type.name == "F32"
    assert list(t["blk.0.ffn_down.weight"].shape) == [128, 64]
    # block for block the stored values are our dequantized weights (exact: same float16 pairs)
    down = m.blocks[0].ffn.down_proj
    got = dequantize(t["blk.0.ffn_down.weight"].data, t["blk.0.ffn_down.weight"].tensor_type).reshape(64, 128)
    assert np.array_equal(got, down.dequantize().numpy())
    k = dequantize(t["blk.1.attn_k.weight"].data, t["blk.1.attn_k.weight"].tensor_type).reshape(32, 64)
    assert np.array_equal(unpermute_rope_rows(k, 2), m.blocks[1].attn.k_proj.dequantize().numpy())
    back = load_gguf(tmp_path / "q.gguf")
    assert not back.config.tie_word_embeddings  # the quantized head is its own tensor now
    if "activation_bits=8" in spec:
        # the file holds the weights; a8 is how the kernel multiplies them (llama.cpp's Q8_1 blocks)
        ref = variant(spec.replace(",activation_bits=8", ""))
    else:
        ref = m
    assert (logits(back) - logits(ref)).abs().max().item() < 1e-4


def test_q4_1_blocks_match_ggml_layout():
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from moorelab.improve.quantize.int4 import Int4WeightOnlyLinear

    # values on a grid of 15 steps per block: ggml's own quantizer finds the same (d, m, q)
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (3, 64), generator=g)
    q[:, 0::32], q[:, 1::32] = 0, 15
    lo = torch.tensor([-0.5, 0.25, 1.0]).repeat_interleave(2).reshape(3, 2)
    step = 0.125
    w = (q.float().reshape(3, 2, 32) * step + lo[..., None]).reshape(3, 64)
    lin = torch.nn.Linear(64, 3, bias=False)
    lin.weight.data = w
    mod = Int4WeightOnlyLinear.from_linear(lin, group_size=32, kernel="torch")
    ours = int4_to_q4_1(mod)
    assert ours.shape == (3, 2 * 20)
    assert np.array_equal(ours, quantize(w.numpy(), GGMLQuantizationType.Q4_1))


@pytest.mark.parametrize("spec,words", [
    ("int8", "Q8_0"), ("int8-dynamic", "float16 scale"),
    ("heads:heads_per_layer=2,importance=weight,layers=[0]", "different shapes"),
])
def test_layouts_without_an_exact_gguf_type_are_refused_with_the_reason(tmp_path, spec, words):
    m = variant(spec)
    assert words in why_not_gguf(m)
    with pytest.raises(MoorelabError, match="--format gguf") as e:
        write_gguf(m, tmp_path / "x.gguf")
    assert words in str(e.value)
    assert not (tmp_path / "x.gguf").exists()


def test_untied_float_head_and_uniform_pruning_are_written(tmp_path):
    m = variant("ffn:fraction=0.25,importance=weight", tied=False)
    assert why_not_gguf(m) is None
    info = write_gguf(m, tmp_path / "p.gguf")
    assert info["types"] == {"F32": 2 * 9 + 3}
    back = load_gguf(tmp_path / "p.gguf")
    assert back.config.d_ff == 96
    assert torch.equal(logits(back), logits(m))


def test_tokenizer_source_follows_the_converted_cache(tmp_path):
    src = tok_source(tmp_path / "src.gguf")
    assert tokenizer_source(src) == src
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "moorelab.json").write_text('{"source": "%s"}' % src)
    assert tokenizer_source(tmp_path / "model-dir", cache) == src
    assert tokenizer_source(None, tmp_path) is None


def test_a_saved_improved_folder_remembers_its_tokenizer_gguf(tmp_path):
    from moorelab.improve.save import save_improved

    src = tok_source(tmp_path / "src.gguf")
    save_improved(variant("int4:group_size=32"), tmp_path / "saved", tokenizer_gguf=str(src))
    assert tokenizer_source(tmp_path / "saved") == src


@pytest.mark.parametrize("switch", [dict(qk_norm=True), dict(scale_embeddings=True), dict(norm_position="post")])
def test_config_switches_the_llama_gguf_cannot_hold_are_refused_before_the_model_changes(tmp_path, switch):
    """The ladder's recipes build llama-family models with QK-norm or scaled embeddings; writing
    them without those would be another model in llama.cpp."""
    import dataclasses

    m = tiny()
    bad = Transformer(dataclasses.replace(m.config, **switch)).eval()
    key = next(iter(switch))
    assert f"needs {key}=" in why_not_gguf(bad)
    with pytest.raises(MoorelabError, match=f"--format gguf: .*{key}"):
        write_gguf(bad, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_a_refused_write_leaves_a_masked_model_as_it_was(tmp_path):
    """The check runs before the masks are baked in: a refused write changes nothing."""
    from torch.nn.utils import parametrize

    masked = variant("magnitude:sparsity=0.5")

    before = sum(parametrize.is_parametrized(x, "weight") for x in masked.modules())
    assert before > 0
    masked.config = dataclasses_replace(masked.config, qk_norm=True)
    with pytest.raises(MoorelabError):
        write_gguf(masked, tmp_path / "x.gguf")
    assert sum(parametrize.is_parametrized(x, "weight") for x in masked.modules()) == before


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)
