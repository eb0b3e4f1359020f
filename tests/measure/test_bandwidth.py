"""moorelab.measure.bandwidth.read_bandwidth: both readers run, the faster counts, bad buffers are
refused."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.measure.bandwidth import read_bandwidth


def test_the_limit_is_the_faster_reader_and_the_threads_are_restored():
    buf = torch.ones((8 << 20) // 4)
    before = torch.get_num_threads()
    r = read_bandwidth(buf=buf, reps=2, threads=1)
    assert torch.get_num_threads() == before
    assert r["gb_per_s_torch_sum"] > 0 and 0 < r["cpu_share"] <= 1.5
    readers = [r["gb_per_s_torch_sum"]]
    if kernels.get_library() is not None:
        assert r["gb_per_s_read_sum"] > 0
        readers.append(r["gb_per_s_read_sum"])
    else:
        assert r["gb_per_s_read_sum"] is None
    assert r["gb_per_s"] == max(readers)
    assert r["gb_per_s_median"] <= r["gb_per_s"]


@pytest.mark.parametrize("bad", [torch.ones(64, dtype=torch.float64), torch.ones(64, 2).t()])
def test_a_buffer_the_readers_cannot_read_is_refused(bad):
    with pytest.raises(ValueError, match="contiguous float32"):
        read_bandwidth(buf=bad)
    with pytest.raises(ValueError, match="reps"):
        read_bandwidth(buf=torch.ones(64), reps=0)
