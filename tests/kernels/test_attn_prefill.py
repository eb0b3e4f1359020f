"""ml_attn_causal (csrc/attn_prefill.c), causal attention of a whole prompt, against float64 references.

Edge shapes: T = 1, T and S not multiples of the 16-position unit, the 16-key tile or the 256-key
block of P·V, keys already in a cache (S > T), head sizes with a half column tile (d_k = 8, 24),
grouped-query heads (1 to 4 query heads per key/value head), several sequences, odd thread
counts, strided (transposed) views, scores large enough to overflow an unshifted exp; and the
refusals.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moorelab import kernels
from moorelab.model.transformer import causal_attention_kernel

lib = kernels.get_library()
pytestmark = pytest.mark.skipif(lib is None, reason=f"compiled kernels unavailable: {kernels.status()}")


def _qkv(B, H, H_kv, T, S, d, seed=0, scale=1.0):
    """q, k, v as the projections leave them ([B, T, heads, d] transposed to [B, heads, T, d])."""
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, T, H, d, generator=g) * scale).transpose(1, 2)
    k = (torch.randn(B, S, H_kv, d, generator=g) * scale).transpose(1, 2)
    v = torch.randn(B, S, H_kv, d, generator=g).transpose(1, 2)
    return q, k, v


def _reference(q, k, v):
    """softmax(QKᵀ/√d + causal mask with S - T earlier keys)·V in float64, as [B, T, H, d]."""
    B, H, T, d = q.shape
    S, rep = k.shape[2], H // k.shape[1]
    kd, vd = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    s = q.double() @ kd.transpose(-1, -2) / math.sqrt(d)
    allowed = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    return (torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vd).transpose(1, 2)


def _run(q, k, v, threads):
    """the C kernel called directly, with a given thread count; returns (code, out [B, T, H, d])."""
    B, H, T, d = q.shape
    H_kv, S = k.shape[1], k.shape[2]
    out = torch.full((B, T, H, d), float("nan"))
    st = torch.tensor([*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], out.stride(0), out.stride(2),
                       out.stride(1)], dtype=torch.int64)
    rc = lib.attn_causal(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), B, T, S, H, H_kv, d,
                         st.data_ptr(), 1.0 / math.sqrt(d), threads)
    return rc, out


SHAPES = [
    # B, H, H_kv, T, S, d
    (1, 9, 3, 100, 100, 64),  # SmolLM2's heads; T not a multiple of 16
    (1, 2, 1, 1, 1, 24),  # one position; d_k with a half column tile
    (2, 4, 2, 37, 37, 8),  # two sequences; the smallest d_k
    (1, 4, 1, 17, 53, 16),  # 36 positions already cached; S not a multiple of 16
    (1, 3, 3, 16, 16, 40),  # multi-head (one query head per kv head); T exactly one unit
    (2, 8, 2, 33, 33, 128),  # LLaMA's d_k
    (1, 4, 2, 300, 560, 24),  # keys past the 256-key blocks of P·V (three blocks, the last partial)
]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}H{}kv{}T{}S{}d{}".format(*s))
def test_matches_the_float64_formula(shape, threads):
    q, k, v = _qkv(*shape)
    rc, out = _run(q, k, v, threads)
    assert rc == 0
    ref = _reference(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)


def test_matches_torch_sdpa_and_the_wrapper_returns_o_projs_layout():
    q, k, v = _qkv(1, 9, 3, 77, 77, 64, seed=3)
    out = causal_attention_kernel(q, k, v)
    assert out.shape == (1, 77, 9, 64) and out.is_contiguous()
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    torch.testing.assert_close(out, sdpa, rtol=0, atol=2e-6)


def test_large_scores_are_shifted_before_the_exponential():
    # scores up to ~±300: exp of them unshifted overflows float32 (max ~88.7); the row maximum is
    # subtracted first. At that size float32 rounding of the scores moves the weights by ~1e-4, so
    # the error is held to torch's own float32 attention's on the same inputs.
    q, k, v = _qkv(1, 2, 1, 40, 40, 64, seed=5, scale=10.0)
    rc, out = _run(q, k, v, 2)
    assert rc == 0 and torch.isfinite(out).all()
    ref = _reference(q, k, v)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    ours_err, torch_err = (out.double() - ref).abs().max().item(), (sdpa.double() - ref).abs().max().item()
    assert 1e-6 < torch_err < 1e-2  # the rounding is real at this size...
    assert ours_err <= 2 * torch_err  # ...and ours is no worse than torch's


def test_the_first_position_sees_only_itself_and_the_last_sees_everything():
    # golden values by hand: position 0 of a fresh prompt is exactly v[0]; with S - T cached keys,
    # query 0 sees keys 0..S-T (equal scores there give the plain mean of those values)
    B, H, T, S, d = 1, 1, 5, 8, 8
    q = torch.zeros(B, H, T, d)
    k = torch.zeros(B, H, S, d)
    v = torch.arange(S * d, dtype=torch.float32).view(1, 1, S, d)
    rc, out = _run(q, k, v, 2)
    assert rc == 0
    for t in range(T):
        seen = S - T + t + 1
        torch.testing.assert_close(out[0, t, 0], v[0, 0, :seen].mean(0), rtol=0, atol=1e-4)
    q1, k1, v1 = _qkv(1, 1, 1, 6, 6, 8)
    rc, out1 = _run(q1, k1, v1, 1)
    torch.testing.assert_close(out1[0, 0, 0], v1[0, 0, 0], rtol=0, atol=1e-6)


def test_empty_inputs_write_nothing():
    q, k, v = _qkv(1, 2, 1, 0, 0, 8)
    rc, out = _run(q, k, v, 2)
    assert rc == 0 and out.numel() == 0
    q, k, v = _qkv(0, 2, 1, 4, 4, 8)
    assert _run(q, k, v, 2)[0] == 0


@pytest.mark.parametrize(
    "B,T,S,H,H_kv,d,threads",
    [(1, 5, 4, 2, 1, 8, 2),  # S < T
     (1, 4, 4, 3, 2, 8, 2),  # H not a multiple of H_kv
     (1, 4, 4, 2, 1, 12, 2),  # d_k not a multiple of 8
     (1, 4, 4, 2, 1, 8, 0)],  # no threads
)
def test_bad_shapes_are_refused_with_code_minus_2(B, T, S, H, H_kv, d, threads):
    x = torch.zeros(64)
    st = torch.zeros(12, dtype=torch.int64)
    assert lib.attn_causal(x.data_ptr(), x.data_ptr(), x.data_ptr(), x.data_ptr(), B, T, S, H, H_kv, d,
                           st.data_ptr(), 1.0, threads) == -2


def test_the_wrapper_declines_what_the_kernel_does_not_do():
    q, k, v = _qkv(1, 2, 1, 6, 6, 12)
    assert causal_attention_kernel(q, k, v) is None  # d_k = 12
    q, k, v = _qkv(1, 2, 1, 6, 6, 8)
    assert causal_attention_kernel(q.double(), k.double(), v.double()) is None
    qg = q.clone().requires_grad_(True)
    with torch.enable_grad():
        assert causal_attention_kernel(qg, k, v) is None  # training: torch's attention, with its backward
    with torch.no_grad():
        assert causal_attention_kernel(qg, k, v) is not None
