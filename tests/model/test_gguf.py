"""GGUF loading: RoPE row permutation (interleaved vs half-split), tiny round trip, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moorelab.errors import ModelLoadError
from moorelab.model.load_gguf import load_gguf, permute_rope_rows, unpermute_rope_rows
from model_helpers import tiny_hf


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(6 * 8 * 5, dtype=np.float32).reshape(48, 5)  # 6 heads of head_dim 8, in=5
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, 6), 6), w)
    # llama.cpp interleaves the two halves of each head: rows (0, 4, 1, 5, 2, 6, 3, 7) of head 0
    assert permute_rope_rows(w, 6)[:8, 0].tolist() == [0, 20, 5, 25, 10, 30, 15, 35]


def write_tiny_gguf(path, ref, arch="llama", skip=None, extra=None):
    """Write an HF tiny llama as llama.cpp's converter would (q/k rows permuted, float32).

    ``extra(writer)`` may add metadata or tensors (e.g. RoPE scaling keys, ``rope_freqs.weight``).
    """
    import gguf

    c = ref.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(500.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    sub = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for hf_name, t in ref.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if hf_name in names:
            name = names[hf_name]
        else:
            _, _, i, *mod, kind = hf_name.split(".")
            name = f"blk.{i}.{sub['.'.join(mod)]}.{kind}"
            # llama.cpp's converter permutes q/k weights and biases alike
            if name.endswith(("attn_q.weight", "attn_q.bias")):
                a = permute_rope_rows(a, c.num_attention_heads)
            elif name.endswith(("attn_k.weight", "attn_k.bias")):
                a = permute_rope_rows(a, c.num_key_value_heads)
        if name != skip:
            w.add_tensor(name, np.ascontiguousarray(a))
    if extra is not None:
        extra(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_tiny_gguf_matches_transformers(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf")
    write_tiny_gguf(tmp_path / "tiny.gguf", ref)
    ours = load_gguf(tmp_path / "tiny.gguf")
    ids = torch.randint(0, 103, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (ours(ids) - ref(ids).logits).abs().max().item()
        assert diff < 1e-5
        # Without undoing the permutation (interleaved pairs read as halves) RoPE is wrong.
        for blk in ours.blocks:
            for proj, n in ((blk.attn.q_proj, 6), (blk.attn.k_proj, 2)):
                proj.weight.copy_(torch.from_numpy(permute_rope_rows(proj.weight.numpy(), n)))
        assert (ours(ids) - ref(ids).logits).abs().max().item() > 1e-2


def test_gguf_bias_tensors_set_the_bias_flags(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf", attention_bias=True, mlp_bias=True)
    write_tiny_gguf(tmp_path / "b.gguf", ref)
    ours = load_gguf(tmp_path / "b.gguf")
    assert ours.config.attn_bias and ours.config.mlp_bias
    ids = torch.randint(0, 103, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (ours(ids) - ref(ids).logits).abs().max().item() < 1e-5


def test_gguf_unknown_architecture(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf")
    write_tiny_gguf(tmp_path / "m.gguf", ref, arch="mamba")
    with pytest.raises(ModelLoadError, match="general.architecture='mamba'"):
        load_gguf(tmp_path / "m.gguf")


def test_gguf_missing_tensor(tmp_path):
    ref = tiny_hf("llama", tmp_path / "hf")
    write_tiny_gguf(tmp_path / "m.gguf", ref, skip="blk.1.ffn_up.weight")
    with pytest.raises(ModelLoadError, match=r"missing tensor 'blocks.1.ffn.up_proj.weight'"):
        load_gguf(tmp_path / "m.gguf")


def test_not_a_gguf_file(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ModelLoadError, match="junk.gguf"):
        load_gguf(p)
