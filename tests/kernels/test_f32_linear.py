"""ml_f32_linear (csrc/f32_gemv.c), the float32 kernel of FastLinear, against float64 references.

Batched decode sends 2..32 rows at once; the kernel runs them three at a time against each
4-row weight tile (f32_dot4x3), the last two (or four) two at a time (f32_dot4x2); partial tiles
take one x row at a time, and a single row (decode) reads the weight rows one after another
(f32_dot1, the decode kernel, on each thread's contiguous rows). Edge shapes: every M from 0 to 13 (each
remainder of the 3-row step), K not a
multiple of 8 (the scalar tail), N not a multiple of 4 (partial tiles), N = 1, odd thread counts.
"""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.model.transformer import FastLinear

lib = kernels.get_library()
pytestmark = pytest.mark.skipif(lib is None, reason=f"compiled kernels unavailable: {kernels.status()}")


def _run(x, w, bias, threads):
    m, k = x.shape
    n = w.shape[0]
    y = torch.full((m, n), float("nan"))
    lib.f32_linear(x.data_ptr(), m, k, w.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(), n,
                   threads)
    return y


@pytest.mark.parametrize("k", [1, 7, 8, 29, 64, 577])
@pytest.mark.parametrize("n", [1, 3, 4, 9, 75])
def test_every_row_count_against_float64(k, n):
    g = torch.Generator().manual_seed(k * 100 + n)
    w = torch.randn(n, k, generator=g)
    bias = torch.randn(n, generator=g)
    for m in range(14):
        x = torch.randn(m, k, generator=g)
        ref = (x.double() @ w.double().T + bias.double())
        for threads in (1, 3):
            for b, r in ((bias, ref), (None, ref - bias.double())):
                got = _run(x, w, b, threads)
                assert not torch.isnan(got).any(), (m, k, n, threads)  # every output written
                # float32 sums of k products: error well under 1e-5 of the sum of |products|
                bound = 1e-5 * (x.double().abs() @ w.double().abs().T + 1)
                assert ((got.double() - r).abs() <= bound).all(), (m, k, n, threads)


def test_three_row_blocks_give_each_row_what_it_gets_alone():
    # rows batched together give, up to float32 rounding, the numbers each row gets decoded alone
    g = torch.Generator().manual_seed(5)
    w = torch.randn(96, 200, generator=g)
    x = torch.randn(16, 200, generator=g)
    together = _run(x, w, None, 2)
    alone = torch.cat([_run(x[i:i + 1], w, None, 2) for i in range(16)])
    assert torch.allclose(together, alone, rtol=1e-5, atol=1e-5)
    assert not torch.equal(together, torch.zeros_like(together))


def test_fast_linear_takes_the_kernel_for_decode_sized_inputs_only():
    lin = FastLinear(40, 12)
    called = []
    real = lib.f32_linear

    class Spy:
        def __getattr__(self, name):
            return getattr(lib, name)

        def f32_linear(self, *a):
            called.append(a[1])
            return real(*a)

    import moorelab.model.transformer as tr
    orig = tr.get_library
    tr.get_library = lambda: Spy()
    try:
        with torch.no_grad():
            mm, mb = FastLinear.M_MAX, FastLinear.M_BATCH
            # rows in all; one token of each of B sequences (batched decode); a prefill of B x 2 tokens
            for shape in [(1, 40), (mm, 40), (mm + 1, 40), (mb, 1, 40), (mb + 1, 1, 40), (3, 2, 40)]:
                x = torch.randn(*shape)
                assert torch.allclose(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias), atol=1e-5)
    finally:
        tr.get_library = orig
    assert called == [1, mm, mb]
