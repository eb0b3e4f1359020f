"""Loaded weights use the decode layout (column-major views without the compiled kernels, row-major
with them) with unchanged values; the module contract still holds; FastLinear matches F.linear."""

from __future__ import annotations

import torch
from model_helpers import tiny_hf
from safetensors.torch import load_model, save_model

import torch.nn.functional as F

from moorelab.model.load_hf import decode_layout_is_column_major, load_hf_folder
from moorelab.model.transformer import FastLinear


def test_column_major_weights_same_values(tmp_path):
    ref = tiny_hf("llama", tmp_path, tie_word_embeddings=True)
    fast = load_hf_folder(tmp_path)
    plain = load_hf_folder(tmp_path, decode_layout=False)
    q = fast.blocks[0].attn.q_proj.weight
    col = decode_layout_is_column_major()
    assert q.shape == (48, 48) and q.stride() == ((1, 48) if col else (48, 1))  # col: view of [in, out] memory
    assert plain.blocks[0].attn.q_proj.weight.is_contiguous()
    assert fast.lm_head.weight is fast.embed.weight
    assert fast.embed.weight.stride() == ((1, 103) if col else (48, 1))
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


def test_fast_linear_matches_f_linear():
    g = torch.Generator().manual_seed(2)
    for n, k, bias in [(37, 53, True), (300, 200, False), (4, 8, True)]:
        lin = FastLinear(k, n, bias=bias)
        assert isinstance(lin, torch.nn.Linear)
        for shape in [(k,), (1, k), (1, 1, k), (3, k), (2, 2, k), (5, k), (1, 0, k)]:
            x = torch.randn(*shape, generator=g)
            with torch.no_grad():
                got, want = lin(x), F.linear(x, lin.weight, lin.bias)
            assert got.shape == want.shape
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (n, k, shape)
        x = torch.randn(1, k, generator=g, requires_grad=True)
        lin(x).sum().backward()  # autograd path: falls back to F.linear
        assert lin.weight.grad is not None and x.grad is not None
