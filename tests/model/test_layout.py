"""Loaded weights are column-major views with unchanged values; the module contract still holds."""

from __future__ import annotations

import torch
from model_helpers import tiny_hf
from safetensors.torch import load_model, save_model

from moorelab.model.load_hf import load_hf_folder


def test_column_major_weights_same_values(tmp_path):
    ref = tiny_hf("llama", tmp_path, tie_word_embeddings=True)
    fast = load_hf_folder(tmp_path)
    plain = load_hf_folder(tmp_path, decode_layout=False)
    q = fast.blocks[0].attn.q_proj.weight
    assert q.shape == (48, 48) and q.stride() == (1, 48)  # [out, in] view of [in, out] memory
    assert plain.blocks[0].attn.q_proj.weight.is_contiguous()
    assert fast.lm_head.weight is fast.embed.weight and fast.embed.weight.stride() == (1, 103)
    assert fast.blocks[0].attn_norm.weight.is_contiguous()
    ids = torch.randint(0, 103, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (fast(ids) - plain(ids)).abs().max() < 1e-5
        assert (fast(ids) - ref(ids).logits).abs().max() < 1e-5


def test_save_model_round_trip_and_linear_swap(tmp_path):
    tiny_hf("llama", tmp_path / "hf")
    m = load_hf_folder(tmp_path / "hf")
    ids = torch.randint(0, 103, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = m(ids)
    save_model(m, str(tmp_path / "m.safetensors"))  # force_contiguous default copes with the layout
    m2 = load_hf_folder(tmp_path / "hf", decode_layout=False)
    with torch.no_grad():
        for p in m2.parameters():
            p.zero_()
    load_model(m2, str(tmp_path / "m.safetensors"))
    with torch.no_grad():
        assert torch.equal(m2(ids), before)
        # Quantization swaps modules in place: any module with nn.Linear's forward contract works.
        old = m.blocks[1].attn.q_proj
        new = torch.nn.Linear(old.in_features, old.out_features, bias=False)
        new.weight.copy_(old.weight)
        m.blocks[1].attn.q_proj = new
        assert (m(ids) - before).abs().max() < 1e-5
        head = torch.nn.Linear(48, 103, bias=False)
        head.weight.copy_(m.lm_head.weight)
        m.lm_head = head
        assert (m(ids) - before).abs().max() < 1e-5
