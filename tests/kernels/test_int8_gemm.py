"""ml_w8_gemm (csrc/int8_gemm.c), the int8-weight prefill GEMM, against float64 references.

Edge shapes: K not a multiple of the 16-input step, N and M not multiples of the 2x4 (AVX2) or
4x4 (AVX512-VNNI) tile, N = 1, M = 0, odd thread counts, K past the 2048-input int32 chunk with the
largest products; each through both tiles where the CPU has VNNI (``ml_w8_gemm_isa``).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from moorelab import kernels

lib = kernels.get_library()
pytestmark = pytest.mark.skipif(lib is None, reason=f"compiled kernels unavailable: {kernels.status()}")


NO_VNNI = "this CPU has no AVX512-VNNI (avx512f, avx512vl, avx512bw, avx512vnni): only the AVX2 tile runs here"


@pytest.fixture(params=[0, 1], ids=["avx2", "avx512vnni"])
def tile(request):
    """Run the test through one tile of ml_w8_gemm, then put back the one in force before."""
    before = lib.w8_gemm_isa(-1)
    if lib.w8_gemm_isa(request.param) != request.param:
        lib.w8_gemm_isa(before)
        pytest.skip(NO_VNNI)
    yield request.param
    lib.w8_gemm_isa(before)


def test_the_vnni_tile_is_available_exactly_where_the_cpu_has_it():
    from moorelab.kernels.build import cpu_flags

    before = lib.w8_gemm_isa(-1)
    flags = cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags to compare with")
    try:
        has = all(f in flags for f in ("avx512f", "avx512vl", "avx512bw", "avx512_vnni"))
        assert lib.w8_gemm_isa(1) == int(has)
        assert lib.w8_gemm_isa(0) == 0
    finally:
        lib.w8_gemm_isa(before)


def _rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 integers of x rounded per row to ``bits`` bits, and the row scales (the kernel's rule)."""
    qmax = float((1 << (bits - 1)) - 1)
    sx = x.abs().amax(dim=1) / qmax
    sx = torch.where(sx > 0, sx, torch.ones_like(sx))
    return torch.round(x / sx[:, None]).clamp(-qmax, qmax).double(), sx


def _gemm(x, w, scale, bias, threads, bits, n=None):
    m, k = x.shape
    n = w.shape[0] if n is None else n
    y = torch.full((m, n), float("nan"))
    rc = lib.w8_gemm(x.data_ptr(), m, k, w.data_ptr(), scale.data_ptr(), None if bias is None else bias.data_ptr(),
                     y.data_ptr(), n, threads, bits)
    return rc, y


def _case(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * 3.0
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    scale = torch.rand(n, generator=g) * 0.01 + 1e-3
    bias = torch.randn(n, generator=g)
    return x, w, scale, bias


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (2, 15, 4), (3, 17, 1), (5, 33, 7), (9, 100, 9), (50, 576, 13),
                                   (49, 64, 130), (4, 32, 4), (52, 48, 8)])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_matches_float64_reference_on_edge_shapes(m, k, n, bits, threads, tile):
    x, w, scale, bias = _case(m, k, n, seed=m * 1000 + k + n)
    for b in (bias, None):
        rc, y = _gemm(x, w, scale, b, threads, bits)
        assert rc == 0
        xq, sx = _rows(x, bits)
        ref = (xq @ w.double().t()) * (sx.double()[:, None] * scale.double()[None, :])
        if b is not None:
            ref = ref + b.double()
        # the integer sum is exact; only the final float32 scaling and bias add round
        tol = 2e-6 * (ref.abs() + 1.0)
        assert ((y.double() - ref).abs() <= tol).all(), (y.double() - ref).abs().max().item()


def test_int16_rows_are_close_to_the_float_product():
    x, w, scale, bias = _case(16, 576, 40, seed=3)
    rc, y = _gemm(x, w, scale, bias, 2, 16)
    assert rc == 0
    exact = x.double() @ (w.double() * scale.double()[:, None]).t() + bias.double()
    mag = x.double().abs() @ (w.double() * scale.double()[:, None]).abs().t()
    # each x is off by at most half a step, max|x_row| / 65534
    bound = (x.abs().amax(1).double() / 65534)[:, None] * (w.double().abs() * scale.double()[:, None]).sum(1)[None, :]
    assert ((y.double() - exact).abs() <= bound + 2e-6 * mag).all()
    assert (y.double() - exact).abs().max() > 0  # it does round (this test would see a float path)


def test_int8_rows_equal_the_decode_kernel_bit_for_bit(tile):
    x, w, scale, bias = _case(11, 200, 21, seed=5)
    rc, y = _gemm(x, w, scale, bias, 3, 8)
    assert rc == 0
    y2 = torch.empty(11, 21)
    assert lib.a8w8_linear(x.data_ptr(), 11, 200, w.data_ptr(), scale.data_ptr(), bias.data_ptr(), y2.data_ptr(),
                           21, 1, None) == 0
    assert torch.equal(y, y2)


@pytest.mark.parametrize("k", [8200, 8208])
def test_long_rows_do_not_overflow_int32(tile, k):
    # K = 8200 with every product at its maximum (32767 * 127 = 4.16e6): one int32 lane over the
    # whole row would take 1,025 of them, 4.3e9 > 2^31, so only the 2048-input chunks keep it
    # exact; 5 rows and 5 columns run a full 4x4 VNNI tile and partial ones. K = 8208 (K mod 32 =
    # 16) adds the VNNI tile's 16-input ymm step after the last chunk boundary.
    n = 5
    x = torch.ones(5, k)
    x[1] = -1.0
    x[2, ::2] = 0.5  # mixed values in one row
    x[3, 1::2] = -1.0
    x[4] = 0.25
    w = torch.full((n, k), 127, dtype=torch.int8)
    w[4] = -127
    scale = torch.full((n,), 0.5)
    rc, y = _gemm(x, w, scale, None, 2, 16)
    assert rc == 0
    xq, sx = _rows(x, 16)
    ref = (xq @ w.double().t()) * (sx.double()[:, None] * 0.5)
    torch.testing.assert_close(y.double(), ref, rtol=1e-6, atol=0)
    assert abs(y[0, 0].item() - k * 127 * 0.5) < 1e-6 * k * 127


def test_zero_rows_and_no_rows():
    x, w, scale, bias = _case(4, 40, 6, seed=9)
    x[1] = 0.0
    rc, y = _gemm(x, w, scale, bias, 2, 16)
    assert rc == 0 and torch.allclose(y[1], bias)
    # M = 0 writes nothing and succeeds
    empty = torch.empty(0, 40)
    out = torch.empty(0, 6)
    assert lib.w8_gemm(empty.data_ptr(), 0, 40, w.data_ptr(), scale.data_ptr(), None, out.data_ptr(), 6, 2, 16) == 0


def test_bad_activation_bits_is_an_error_code():
    x, w, scale, bias = _case(2, 32, 4, seed=1)
    rc, y = _gemm(x, w, scale, bias, 1, 12)
    assert rc == -2 and torch.isnan(y).all()


def test_the_two_tiles_give_the_same_numbers_bit_for_bit():
    # the same exact integer sums and the same float expression: equal, not just close
    before = lib.w8_gemm_isa(-1)
    if lib.w8_gemm_isa(1) != 1:
        lib.w8_gemm_isa(before)
        pytest.skip(NO_VNNI)
    try:
        # rows mod 4 = 3, 0, 1, 2 (the VNNI tile's short-row paths), columns short of a tile too;
        # K mod 32 >= 16 (48, 2064, 4112) runs the VNNI tile's 16-input ymm step, in the first
        # chunk, after one 2048-input chunk boundary and after two
        shapes = [(7, 37, 9), (48, 576, 20), (97, 1536, 12), (50, 100, 8), (7, 48, 9), (5, 2064, 5), (9, 4112, 6)]
        for (m, k, n), bits in itertools.product(shapes, (8, 16)):
            x, w, scale, bias = _case(m, k, n, seed=k)
            got = {}
            for isa in (0, 1):
                assert lib.w8_gemm_isa(isa) == isa
                rc, got[isa] = _gemm(x, w, scale, bias, 3, bits)
                assert rc == 0
            assert torch.equal(got[0], got[1]), (m, k, n, bits)
    finally:
        lib.w8_gemm_isa(before)


def test_an_int8_layer_names_the_gemm_tile_in_force(tile):
    from moorelab.improve.quantize.int8 import Int8WeightOnlyLinear

    layer = Int8WeightOnlyLinear.from_linear(torch.nn.Linear(32, 8))
    want = "moorelab-avx512vnni int8 GEMM" if tile == 1 else "moorelab-avx2 int8 GEMM"
    assert layer.prefill_kernel.startswith(want), layer.prefill_kernel
