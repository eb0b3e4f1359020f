"""moorelab.measure.bandwidth.read_bandwidth: both readers run, the faster counts, bad buffers are
refused."""

from __future__ import annotations

import pytest
import torch

from moorelab import kernels
from moorelab.measure.bandwidth import huge_page_fraction, last_level_cache, read_bandwidth, reference_buffer, thp_setting
from moorelab.model.weight_arena import smaps_mappings


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


def _vm_flags(ptr: int) -> list[str] | None:
    """VmFlags of this process's mapping that holds address ``ptr``, None where unreadable."""
    try:
        for a, b, fields in smaps_mappings():
            if a <= ptr < b:
                return fields.get("VmFlags:", "").split()
    except OSError:
        return None
    return None


def _thp_allowed_here() -> str | None:
    """Why this process cannot get transparent huge pages (a reason to skip), or None when it can."""
    setting = thp_setting()
    if setting not in ("always", "madvise"):
        return f"transparent huge pages are {setting!r} on this host"
    try:
        with open("/proc/self/status") as f:
            if any(line.split() == ["THP_enabled:", "0"] for line in f):
                return "THP is disabled for this process (prctl PR_SET_THP_DISABLE, inherited)"
        with open("/sys/kernel/mm/transparent_hugepage/defrag") as f:
            defrag = f.read()
    except OSError as e:
        return f"cannot read the THP state: {e}"
    if defrag[defrag.index("[") + 1:defrag.index("]")] not in ("always", "madvise", "defer+madvise"):
        return f"THP defrag is {defrag.strip()!r}: no compaction at fault time, huge pages only by chance"
    return None


def test_the_reference_buffer_is_ones_on_a_2mib_aligned_mapping_advised_for_huge_pages():
    buf = reference_buffer(16 << 20)
    assert buf.dtype is torch.float32 and buf.numel() == (16 << 20) // 4
    assert buf.data_ptr() % (2 << 20) == 0
    assert float(buf.sum()) == buf.numel()
    flags = _vm_flags(buf.data_ptr())
    if flags is None:
        pytest.skip("/proc/self/smaps cannot be read here (not Linux): no mapping to inspect")
    assert "hg" in flags  # what our code controls: madvise(MADV_HUGEPAGE) on the buffer's own mapping
    why = _thp_allowed_here()
    if why:
        pytest.skip(why)
    r = read_bandwidth(buf=buf, reps=1, threads=1)
    # the kernel may fall back to small pages under fragmentation, but not for all 8 of them on a
    # fresh 16 MiB mapping with compaction allowed at fault time for madvised regions
    assert r["huge_page_fraction"] >= 0.25


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


def test_huge_page_fraction_counts_shared_bytes_once_and_refuses_no_bytes(tmp_path):
    buf = torch.zeros(4096)  # 16,384 bytes
    lo = buf.data_ptr()
    smaps = tmp_path / "smaps"
    # one mapping around the tensor with 8 kB on huge pages (a fake: the count is clipped to the
    # tensor's bytes inside the mapping), a blank line, and another mapping that does not overlap
    smaps.write_text(f"{lo - 4096:x}-{lo + 16384 + 4096:x} rw-p 00000000 00:00 0\n"
                     "Size:                 24 kB\nAnonHugePages:         8 kB\n\n"
                     f"{lo + (1 << 30):x}-{lo + (1 << 30) + 4096:x} rw-p 00000000 00:00 0\n"
                     "AnonHugePages:      2048 kB\n")
    assert huge_page_fraction([buf], smaps=str(smaps)) == pytest.approx(8192 / 16384)
    # the same tensor twice and a view of half of it: still 16,384 bytes, 8,192 on huge pages
    assert huge_page_fraction([buf, buf, buf[:2048]], smaps=str(smaps)) == pytest.approx(0.5)
    assert huge_page_fraction([buf], smaps=str(tmp_path / "absent")) is None
    with pytest.raises(ValueError, match="no bytes"):
        huge_page_fraction([])
    with pytest.raises(ValueError, match="no bytes"):
        huge_page_fraction([torch.zeros(0)])


def test_an_empty_buffer_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        read_bandwidth(buf=torch.zeros(0))


def test_last_level_cache_reads_the_highest_level_data_cache(tmp_path):
    def idx(i, level, typ, size):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{typ}\n")
        (d / "size").write_text(f"{size}\n")

    assert last_level_cache(str(tmp_path)) is None
    idx(0, 1, "Data", "48K")
    idx(1, 1, "Instruction", "32K")
    idx(2, 2, "Unified", "2048K")
    assert last_level_cache(str(tmp_path)) == (2, 2048 << 10)
    idx(3, 3, "Unified", "480M")
    assert last_level_cache(str(tmp_path)) == (3, 480 << 20)
    idx(4, 4, "Instruction", "1G")  # not a data cache
    idx(5, 5, "Unified", "lots")  # unreadable size: skipped, not a crash
    assert last_level_cache(str(tmp_path)) == (3, 480 << 20)
