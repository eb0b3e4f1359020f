"""moorelab.measure.bandwidth.read_bandwidth: both readers run, the faster counts, bad buffers are
refused."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.measure.bandwidth import huge_page_fraction, read_bandwidth, reference_buffer, thp_setting


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


def test_the_reference_buffer_is_ones_on_2mib_aligned_huge_pages():
    buf = reference_buffer(16 << 20)
    assert buf.dtype is torch.float32 and buf.numel() == (16 << 20) // 4
    assert buf.data_ptr() % (2 << 20) == 0
    assert float(buf.sum()) == buf.numel()
    r = read_bandwidth(buf=buf, reps=1, threads=1)
    if thp_setting() in ("always", "madvise"):
        # the kernel may fall back to small pages under fragmentation, but not for all 8 of them
        # on a fresh 16 MiB mapping with defrag allowed for madvised regions
        assert r["huge_page_fraction"] >= 0.25
    else:
        pytest.skip(f"transparent huge pages are {thp_setting()!r} here: nothing to check")


def test_default_buffer_is_the_reference_buffer(monkeypatch):
    import moorelab.measure.bandwidth as bw

    made = []
    real = bw.reference_buffer
    monkeypatch.setattr(bw, "reference_buffer", lambda n: made.append(n) or real(n))
    bw.read_bandwidth(n_bytes=1 << 20, reps=1, threads=1)
    assert made == [1 << 20]


def test_reference_buffer_refuses_less_than_one_float():
    with pytest.raises(ValueError, match="n_bytes"):
        reference_buffer(3)


def test_thp_setting_reads_the_bracketed_word(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert thp_setting(str(f)) == "madvise"
    assert thp_setting(str(tmp_path / "absent")) is None


def test_huge_page_fraction_counts_each_tensor_once_and_refuses_nothing():
    buf = reference_buffer(4 << 20)
    one = huge_page_fraction([buf])
    assert one is None or 0.0 <= one <= 1.0
    assert huge_page_fraction([buf, buf]) == one  # not double counted
    with pytest.raises(ValueError, match="no bytes"):
        huge_page_fraction([])
