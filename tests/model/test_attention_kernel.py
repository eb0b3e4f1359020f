"""The compiled causal attention inside the model: taken where it applies, equal to torch's fused
attention and to transformers, and out of the way for padding, gradients and other dtypes."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.model import transformer as tr
from moorelab.model.load_hf import load_hf_folder
from moorelab.model.transformer import Attention, KVCache
from model_helpers import tiny_hf

pytestmark = pytest.mark.skipif(kernels.get_library() is None,
                                reason=f"compiled kernels unavailable: {kernels.status()}")


@pytest.fixture
def calls(monkeypatch):
    """Count the kernel's calls and how many of them ran (returned a tensor)."""
    seen = {"called": 0, "ran": 0}
    real = tr.causal_attention_kernel

    def counting(q, k, v):
        seen["called"] += 1
        out = real(q, k, v)
        seen["ran"] += out is not None
        return out

    monkeypatch.setattr(tr, "causal_attention_kernel", counting)
    return seen


@pytest.fixture
def llama(tmp_path):
    ref = tiny_hf("llama", tmp_path)  # 6 query heads on 2 kv heads, d_k = 8
    return ref, load_hf_folder(tmp_path)


def _ids(B=2, T=23, seed=1):
    return torch.randint(0, 103, (B, T), generator=torch.Generator().manual_seed(seed))


def test_a_causal_prompt_takes_the_kernel_and_matches_torch_and_transformers(llama, calls):
    ref, ours = llama
    ids = _ids()
    with torch.no_grad():
        mine = ours(ids)
        assert calls == {"called": 2, "ran": 2}  # one per layer
        Attention.causal_kernel = False
        try:
            fused = ours(ids)
        finally:
            Attention.causal_kernel = True
        assert calls["called"] == 2  # switched off: not asked
        theirs = ref(ids).logits
    assert (mine - fused).abs().max().item() < 1e-5
    assert (mine - theirs).abs().max().item() < 1e-5


def test_a_cached_prefill_through_the_kernel_decodes_as_without_a_cache(llama, calls):
    _, ours = llama
    ids = _ids(B=1, T=19)
    with torch.no_grad():
        full = ours(ids)
        before = calls["ran"]
        cache = KVCache(max_len=32)
        first = ours(ids[:, :12], cache=cache)  # an empty cache: the prompt is plain causal
        ran = calls["ran"] - before
        steps = [ours(ids[:, t:t + 1], cache=cache) for t in range(12, 19)]
    assert ran == 2
    got = torch.cat([first, *steps], dim=1)
    # the kernel's prefill and the per-token decode sum in different orders: 1.1e-5 seen on an
    # AVX2-only host (the float32 gap moves with the vector width of torch's kernels)
    assert (got - full).abs().max().item() < 2e-5


def test_padding_gradients_and_float64_keep_torchs_attention(llama, calls):
    _, ours = llama
    ids = _ids()
    with torch.no_grad():
        ours(ids, attention_mask=torch.tensor([[0] * 3 + [1] * 20, [1] * 23]))  # padded: a mask
    assert calls["ran"] == 0 and calls["called"] == 0
    ours(ids).sum().backward()  # training: the kernel declines, torch's attention has the backward
    assert calls["called"] == 2 and calls["ran"] == 0
    with torch.no_grad():
        ours.double()(ids)
    assert calls["ran"] == 0
