"""ml_w4a8_gemm (csrc/int4.c), the int4 g32 x int8-activation prefill GEMM, and the AVX2 block
rounding of activations (int4 a8/a16 and int8-dynamic b32) against their references.

* the GEMM against a float64 reference Ŵ·x̂ (weights dequantized from the packed nibbles, float16
  scales and mins; x rounded per 32-block as the kernels round it), and against the decode GEMV
  (ml_w4a8_linear) bit for bit, on edge shapes: M = 0, 1 and not a multiple of the 3-row tile or
  the 48-row block, N = 1 and not a multiple of the 3-row tile, K with a partial last 8-block step
  (nb = 9, 18) and exactly one step (nb = 8), odd thread counts;
* NaN and infinity in a row reach that row's outputs and no other;
* a group size other than 32, or K not a multiple of 32, is refused (-2);
* the vectorized block rounding equals the scalar code bit for bit (values, block scales, group
  sums), with NaN, infinities, zero blocks, values that underflow and sums that overflow; the
  8-bit g32 pair layout (two blocks' evens, then their odds) by hand.
"""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.improve.quantize.int4 import Int4WeightOnlyLinear, quantize_int4_groupwise, round_activations_blocks

lib = kernels.get_library()
pytestmark = pytest.mark.skipif(lib is None, reason=f"compiled kernels unavailable: {kernels.status()}")


def _layer(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    qw, sc, mn = quantize_int4_groupwise(w, 32, "w")
    return qw.contiguous(), sc.to(torch.float16).contiguous(), mn.to(torch.float16).contiguous(), torch.randn(n, generator=g)


def _dequant64(qw: torch.Tensor, sc: torch.Tensor, mn: torch.Tensor) -> torch.Tensor:
    """float64 Ŵ [N, K] from packed nibbles (low nibble = even index) and float16 group scales / mins."""
    lo, hi = (qw & 0x0F).double(), (qw >> 4).double()
    q = torch.stack((lo, hi), dim=2).reshape(qw.shape[0], -1)
    rep = q.shape[1] // sc.shape[1]
    return q * sc.double().repeat_interleave(rep, 1) + mn.double().repeat_interleave(rep, 1)


def _run(fn, x, qw, sc, mn, bias, n, threads, g=32):
    m, k = x.shape
    y = torch.full((m, n), 7.0)
    rc = fn(x.data_ptr(), m, k, qw.data_ptr(), sc.data_ptr(), mn.data_ptr(), g,
            None if bias is None else bias.data_ptr(), y.data_ptr(), n, threads)
    return rc, y


SHAPES = [(1, 1, 32), (2, 3, 64), (3, 3, 288), (4, 7, 256), (5, 2, 576), (47, 5, 96), (49, 4, 288), (97, 13, 576)]


@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("with_bias", [True, False])
def test_gemm_matches_float64_reference_and_the_gemv_bit_for_bit(m, n, k, threads, with_bias):
    qw, sc, mn, bias = _layer(n, k, seed=m * 1000 + n * 10 + k)
    bias = bias if with_bias else None
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k + m)) * 2.0
    rc, y = _run(lib.w4a8_gemm, x, qw, sc, mn, bias, n, threads)
    assert rc == 0
    ref = round_activations_blocks(x, 8).double() @ _dequant64(qw, sc, mn).T + (0.0 if bias is None else bias.double())
    scale = (round_activations_blocks(x, 8).double().abs() @ _dequant64(qw, sc, mn).abs().T).clamp_min(1e-3)
    assert float(((y.double() - ref).abs() / scale).max()) < 2e-6
    rc2, y2 = _run(lib.w4a8_linear, x, qw, sc, mn, bias, n, threads)
    assert rc2 == 0
    assert torch.equal(y.view(torch.int32), y2.view(torch.int32))


@pytest.mark.parametrize("nb", list(range(1, 18)))
def test_every_partial_8_block_tail_matches_reference_and_gemv(nb):
    """K = 32 nb for nb = 1..17: the last 8-block step holds 1..8 blocks (the GEMV's masked
    loads of 1..7 float16 values, odd counts by vpinsrw; the GEMM's zero-padded arrays)."""
    k = 32 * nb
    qw, sc, mn, bias = _layer(5, k, seed=nb)
    x = torch.randn(4, k, generator=torch.Generator().manual_seed(100 + nb))
    rc, y = _run(lib.w4a8_gemm, x, qw, sc, mn, bias, 5, 2)
    assert rc == 0
    ref = round_activations_blocks(x, 8).double() @ _dequant64(qw, sc, mn).T + bias.double()
    scale = (round_activations_blocks(x, 8).double().abs() @ _dequant64(qw, sc, mn).abs().T).clamp_min(1e-3)
    assert float(((y.double() - ref).abs() / scale).max()) < 2e-6
    _, y2 = _run(lib.w4a8_linear, x, qw, sc, mn, bias, 5, 2)
    assert torch.equal(y.view(torch.int32), y2.view(torch.int32))


def test_gemm_m0_writes_nothing_and_bad_layouts_are_refused():
    qw, sc, mn, bias = _layer(4, 64, seed=1)
    x = torch.randn(1, 64)
    y = torch.full((1, 4), 7.0)
    rc = lib.w4a8_gemm(x.data_ptr(), 0, 64, qw.data_ptr(), sc.data_ptr(), mn.data_ptr(), 32, bias.data_ptr(),
                       y.data_ptr(), 4, 2)
    assert rc == 0 and bool((y == 7.0).all())  # M = 0: the buffer is untouched
    rc = lib.w4a8_gemm(x.data_ptr(), -1, 64, qw.data_ptr(), sc.data_ptr(), mn.data_ptr(), 32, None,
                       y.data_ptr(), 4, 2)
    assert rc == -2 and bool((y == 7.0).all())  # a negative count is refused
    x = torch.randn(3, 64)
    rc, y = _run(lib.w4a8_gemm, x, qw, sc, mn, None, 4, 2, g=64)
    assert rc == -2 and bool((y == 7.0).all())  # refused before writing
    rc, _ = _run(lib.w4a8_gemm, torch.randn(3, 48), qw, sc, mn, None, 4, 2)  # K = 48: not whole blocks
    assert rc == -2


def test_gemm_nan_and_infinity_reach_their_rows_only():
    qw, sc, mn, bias = _layer(5, 96, seed=2)
    mn[2] = 0.0  # a weight row whose min term is 0 x (inf or NaN)
    x = torch.randn(8, 96, generator=torch.Generator().manual_seed(3))
    x[1, 40] = float("nan")
    x[4, 3] = float("inf")
    x[7, 10], x[7, 70] = float("nan"), float("-inf")  # both in one row: NaN payloads must match too
    rc, y = _run(lib.w4a8_gemm, x, qw, sc, mn, bias, 5, 2)
    assert rc == 0
    assert bool(y[1].isnan().all()) and not bool(y[4].isfinite().any()) and bool(y[7].isnan().all())
    ok = [0, 2, 3, 5, 6]
    assert bool(y[ok].isfinite().all())
    _, y2 = _run(lib.w4a8_linear, x, qw, sc, mn, bias, 5, 2)
    assert torch.equal(y.view(torch.int32), y2.view(torch.int32))


def test_module_prefill_runs_the_gemm_with_the_decode_numbers():
    lin = torch.nn.Linear(96, 10)
    mod = Int4WeightOnlyLinear.from_linear(lin, 32, activation_bits=8)
    x = torch.randn(20, 96, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        y = mod(x)
        assert "gemm" in mod.last_kernel and mod.last_kernel == mod.prefill_kernel
        rows = torch.cat([mod(x[i:i + 1]) for i in range(20)])  # decode: the GEMV, row by row
        assert mod.last_kernel == mod.kernel
    assert torch.equal(y.view(torch.int32), rows.view(torch.int32))
    g64 = Int4WeightOnlyLinear.from_linear(torch.nn.Linear(128, 4), 64, activation_bits=8)
    assert "dequant" in g64.prefill_kernel  # no GEMM for groups of 64: dequantize + float matmul


def _prep_case(seed: int, k: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(k, generator=g) * float(torch.rand(1, generator=g) * 10) ** 3
    kind = seed % 7
    if kind == 1:
        x[int(torch.randint(0, k, (1,), generator=g))] = float("nan")
    elif kind == 2:
        x[int(torch.randint(0, k, (1,), generator=g))] = float("-inf")
    elif kind == 3:
        x[: min(k, 32)] = 0.0
    elif kind == 4:
        x *= 3e37  # group sums overflow to infinity
    elif kind == 5:
        x *= 1e-43  # subnormal: max / 127 underflows
    elif kind == 6:
        x[int(torch.randint(0, k, (1,), generator=g))] = float("nan")
        x[int(torch.randint(0, k, (1,), generator=g))] = float("inf")
    return x


def test_int4_block_rounding_overflowing_group_sum_by_hand():
    """Finite values whose float group sum overflows take the scalar fallback (xsum = inf) in the
    vectorized code too; values just below the FLT_MAX / (2 G) threshold keep s * sum(q)."""
    big = torch.tensor([3e38, 3e38, -3e38, -3e38] * 8, dtype=torch.float32)  # sum(q) = 0, float sum = inf
    below = torch.full((32,), float(torch.finfo(torch.float32).max) / 64 * 0.99)  # G = 32: not risky
    for x, want_inf in ((big, True), (below, False)):
        for fn in (lib.w4q_prep, lib.w4q_prep_ref):
            xq = torch.zeros(32, dtype=torch.uint8)
            bs, xs = torch.zeros(1), torch.zeros(1)
            fn(8, x.data_ptr(), 32, 32, xq.data_ptr(), bs.data_ptr(), xs.data_ptr())
            assert bool(torch.isinf(xs[0])) == want_inf
            if not want_inf:
                assert float(xs[0]) == float(bs[0] * 4064)  # s * sum(q), q = 127 each


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


@pytest.mark.parametrize("bits", [8, 16])
def test_int4_block_rounding_vectorized_equals_scalar(bits):
    for seed in range(120):
        k = 32 * (1 + seed % 13)
        gsz = 64 if k % 64 == 0 and seed % 2 else 32
        x = _prep_case(seed, k)
        out = []
        for fn in (lib.w4q_prep, lib.w4q_prep_ref):
            xq = torch.zeros(k * bits // 8, dtype=torch.uint8)
            bs, xs = torch.zeros(k // 32), torch.zeros(k // gsz)
            fn(bits, x.data_ptr(), k, gsz, xq.data_ptr(), bs.data_ptr(), xs.data_ptr())
            out.append((xq, bs, xs))
        (q1, b1, s1), (q2, b2, s2) = out
        assert torch.equal(q1, q2) and _same_bits(b1, b2) and _same_bits(s1, s2), (seed, k, gsz)


def test_int4_block_rounding_layout_and_values_by_hand():
    x = torch.arange(32, dtype=torch.float32) - 10.0  # max |x| = 21 -> step 21/127
    xq = torch.zeros(32, dtype=torch.int8)
    bs, xs = torch.zeros(1), torch.zeros(1)
    lib.w4q_prep(8, x.data_ptr(), 32, 32, xq.data_ptr(), bs.data_ptr(), xs.data_ptr())
    step = torch.tensor(21.0) / 127.0
    q = torch.round(x / step).clamp(-127, 127)
    assert float(bs[0]) == float(step)
    assert xq.tolist() == q[0::2].to(torch.int8).tolist() + q[1::2].to(torch.int8).tolist()  # evens, then odds
    assert float(xs[0]) == float(step * q.sum())


def test_int4_a8_g32_pair_layout_by_hand():
    # groups of 32 with 8-bit activations: blocks 2p, 2p + 1 as [2p evens | 2p+1 evens | 2p odds |
    # 2p+1 odds] (one 32-byte weight load holds both blocks' nibbles); a last odd block stays
    # [evens | odds]. Both the vectorized and the scalar rounding give it.
    x = torch.arange(96, dtype=torch.float32) - 40.0
    q = []
    for b in range(3):
        blk = x[32 * b: 32 * b + 32]
        q.append(torch.round(blk / (blk.abs().max() / 127.0)).clamp(-127, 127).to(torch.int8))
    want = (q[0][0::2].tolist() + q[1][0::2].tolist() + q[0][1::2].tolist() + q[1][1::2].tolist()
            + q[2][0::2].tolist() + q[2][1::2].tolist())
    for fn in (lib.w4q_prep, lib.w4q_prep_ref):
        xq = torch.zeros(96, dtype=torch.int8)
        bs, xs = torch.zeros(3), torch.zeros(3)
        fn(8, x.data_ptr(), 96, 32, xq.data_ptr(), bs.data_ptr(), xs.data_ptr())
        assert xq.tolist() == want
    # other group sizes and 16-bit activations keep [evens | odds] per block
    xq16, bs16, xs16 = torch.zeros(64, dtype=torch.int16), torch.zeros(2), torch.zeros(2)
    lib.w4q_prep(16, x.data_ptr(), 64, 32, xq16.data_ptr(), bs16.data_ptr(), xs16.data_ptr())
    steps = [float(x[32 * b: 32 * b + 32].abs().max()) / 32767 for b in range(2)]
    q16 = [torch.round(x[32 * b: 32 * b + 32] / steps[b]).to(torch.int16) for b in range(2)]
    assert xq16.tolist() == q16[0][0::2].tolist() + q16[0][1::2].tolist() + q16[1][0::2].tolist() + q16[1][1::2].tolist()
    xq64, bs64, xs64 = torch.zeros(64, dtype=torch.int8), torch.zeros(2), torch.zeros(1)
    lib.w4q_prep(8, x.data_ptr(), 64, 64, xq64.data_ptr(), bs64.data_ptr(), xs64.data_ptr())
    assert xq64.tolist() == q[0][0::2].tolist() + q[0][1::2].tolist() + q[1][0::2].tolist() + q[1][1::2].tolist()


def test_int8_b32_block_rounding_vectorized_equals_scalar():
    for seed in range(150):
        k = 1 + (seed * 37) % 300  # short last blocks too
        x = _prep_case(seed, k)
        out = []
        for fn in (lib.a8b_prep, lib.a8b_prep_ref):
            xq, bs = torch.zeros(k, dtype=torch.int8), torch.zeros((k + 31) // 32)
            fn(x.data_ptr(), k, xq.data_ptr(), bs.data_ptr())
            out.append((xq, bs))
        assert torch.equal(out[0][0], out[1][0]) and _same_bits(out[0][1], out[1][1]), (seed, k)
