"""ml_read_sum (csrc/read_bw.c), the decode benchmarks' second read-bandwidth reference: it must
read every float once, whatever the length and the thread count (a reader that skipped part of
the buffer would report a bandwidth it never read)."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels

lib = kernels.get_library()
pytestmark = pytest.mark.skipif(lib is None, reason=f"compiled kernels unavailable: {kernels.status()}")


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 95, 1000, 4099])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_every_float_is_read_once(n, threads):
    # halves and threes: every partial sum is exact in float32 at these lengths, so a missed or
    # doubled element changes the result
    x = torch.ones(n) * 0.5
    x[::7] = 3.0
    got = lib.read_sum(x.data_ptr(), n, threads)
    assert got == pytest.approx(float(x.double().sum()), abs=1e-6)
    if n:
        y = x.clone()
        y[-1] += 1.0  # the last element (a thread's scalar tail) counts
        assert lib.read_sum(y.data_ptr(), n, threads) == pytest.approx(float(x.double().sum()) + 1.0, abs=1e-6)
