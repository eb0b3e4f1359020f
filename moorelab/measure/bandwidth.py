"""Read bandwidth: the memory limit a decode is measured against.

A decoded token reads every weight once, so ``read bandwidth / bytes per token`` is its ceiling
in tokens/s. The bandwidth is the best pass of two readers over one buffer (512 MiB by default),
alternating: ``torch.sum`` and ``ml_read_sum`` (``moorelab/kernels/csrc/read_bw.c``: one
contiguous part per thread, four AVX2 accumulators), when the kernels are built. The faster
counts: other processes only slow a pass down, and a reader slower than the host allows is not
the host's limit — on 2026-12-02 (a Zen 4 host) our float32 decode read 51 GB/s where
``torch.sum``'s best passes read 27-44 GB/s across the same benchmark run. A shared host's
bandwidth also swings within minutes (31 and 49 GB/s at the start and end of one run on
2026-12-01), so a benchmark measures it beside each measurement it divides.

The buffer sits on the same kind of pages as the packed decode weights
(:func:`reference_buffer`: 2 MiB-aligned, advised for transparent huge pages). On 2026-12-02,
with the host's THP setting at ``madvise``, a plain ``torch.ones`` buffer (4 KiB pages) read
3-18% slower than one on huge pages on two threads (23-27% on one), and the packed float32
decode read at 99-109% of that lower "limit": a limit on other pages than the decode's is no
limit.
"""

from __future__ import annotations

import statistics
import time

import torch

from moorelab.measure.speed import CpuShareClock
from moorelab.model.weight_arena import huge_page_bytes, tensor_spans

#: where Linux shows its transparent-huge-page mode
THP_SETTING_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_setting(path: str = THP_SETTING_FILE) -> str | None:
    """The host's transparent-huge-page mode (``always``, ``madvise`` or ``never``: the bracketed
    word of ``path``), or None where it cannot be read (not Linux)."""
    try:
        with open(path) as f:
            text = f.read()
        return text[text.index("[") + 1:text.index("]")]
    except (OSError, ValueError):
        return None


def huge_page_fraction(tensors: list[torch.Tensor], smaps: str = "/proc/self/smaps") -> float | None:
    """The share of the bytes under ``tensors`` that transparent huge pages back, 0-1 (bytes
    shared by several tensors, e.g. a tensor and a view of it, counted once;
    :func:`moorelab.model.weight_arena.huge_page_bytes`, an upper bound for tensors that share a
    mapping with other memory); None where ``smaps`` cannot be read (not Linux).

    Raises ValueError for an empty list or tensors of 0 bytes (callers with possibly no tensors,
    e.g. ``fused_decode.decode_weights`` of a model the fused decode does not run, check first)."""
    total = sum(hi - lo for lo, hi in tensor_spans(tensors))
    if total == 0:
        raise ValueError("huge_page_fraction: no bytes to count")
    hb = huge_page_bytes(tensors, smaps=smaps)
    return None if hb is None else hb / total


def last_level_cache(cpu_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> tuple[int, int] | None:
    """``(level, bytes)`` of the largest-level data or unified cache CPU 0 reports in sysfs
    (``index*/level``, ``type``, ``size`` as ``"491520K"``/``"32M"``), or None where it cannot be
    read. On a VM this is what the hypervisor reports; it says whether a working set of a given
    size can stay in cache between decode steps (e.g. 84 MB of int4 weights under a 480 MiB L3),
    where the 512 MiB reference read is not the decode's ceiling. Raises nothing."""
    import glob
    import os

    best = None
    for d in glob.glob(os.path.join(cpu_dir, "index*")):
        try:
            with open(os.path.join(d, "type")) as f:
                if f.read().strip() == "Instruction":
                    continue
            with open(os.path.join(d, "level")) as f:
                level = int(f.read().strip())
            with open(os.path.join(d, "size")) as f:
                size = f.read().strip()
        except (OSError, ValueError):
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:].upper(), 1)
        try:
            n = int(size[:-1] if mult != 1 else size) * mult
        except ValueError:
            continue
        if best is None or level > best[0]:
            best = (level, n)
    return best


def reference_buffer(n_bytes: int = 512 << 20) -> torch.Tensor:
    """The read-bandwidth buffer: ``n_bytes // 4`` float32 ones on a mapping of their own, 2 MiB
    aligned and advised for transparent huge pages
    (:func:`moorelab.model.weight_arena.huge_page_tensor`), as the decode weights are packed.
    Raises ValueError when ``n_bytes`` < 4, OSError when the mapping cannot be made."""
    from moorelab.model.weight_arena import huge_page_tensor

    if n_bytes < 4:
        raise ValueError(f"n_bytes must be at least 4, got {n_bytes}")
    return huge_page_tensor(n_bytes // 4).fill_(1.0)


def read_bandwidth(buf: torch.Tensor | None = None, n_bytes: int = 512 << 20, reps: int = 3,
                   threads: int | None = None) -> dict:
    """Best read bandwidth over ``buf`` (float32, contiguous; when None, a
    :func:`reference_buffer` of ``n_bytes`` is made here — pass one buffer to repeated calls: allocating 512 MiB takes longer than reading
    it) on ``threads`` threads (default ``torch.get_num_threads()``), ``reps`` passes of each
    reader, alternating.

    Returns a dict: ``gb_per_s`` (GB/s = 1e9 bytes per wall second, the best pass of either
    reader), ``gb_per_s_torch_sum`` and ``gb_per_s_read_sum`` (each reader's best; the latter
    None when the kernels are not built), ``gb_per_s_median`` (the median pass of the reader whose
    best counts), ``gb_per_cpu_s`` (bytes per CPU second of all threads, best pass: the read rate
    per unit of CPU, for the CPU-time columns of bench_decode_depth), ``cpu_share`` (median CPU
    share of all passes, :class:`~moorelab.measure.speed.CpuShareClock`), ``huge_page_fraction``
    (the share of ``buf``'s bytes on transparent huge pages,
    :func:`~moorelab.model.weight_arena.huge_page_bytes`; None where it cannot be read).

    Raises ValueError when ``buf`` is not a non-empty contiguous float32 CPU tensor, ``reps`` < 1
    or (``buf`` None) ``n_bytes`` < 4; OSError when the default buffer's mapping cannot be made.
    """
    from moorelab import kernels

    if reps < 1:
        raise ValueError(f"reps must be at least 1, got {reps}")
    if buf is None:
        buf = reference_buffer(n_bytes)
    if buf.dtype is not torch.float32 or not buf.is_contiguous() or buf.device.type != "cpu" or buf.numel() == 0:
        raise ValueError("buf must be a non-empty contiguous float32 CPU tensor")
    n_bytes = buf.numel() * buf.element_size()
    nthreads = threads or torch.get_num_threads()
    klib = kernels.get_library()
    readers = {"torch.sum": lambda: buf.sum()}
    if klib is not None:
        readers["ml_read_sum"] = lambda: klib.read_sum(buf.data_ptr(), buf.numel(), nthreads)
    old = torch.get_num_threads()
    torch.set_num_threads(nthreads)
    try:
        for f in readers.values():
            f()
        clock, times, cpu, shares = CpuShareClock(), {k: [] for k in readers}, [], []
        for _ in range(reps):
            for name, f in readers.items():
                clock.start()
                c, t = time.process_time(), time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                shares.append(clock.stop())
    finally:
        torch.set_num_threads(old)
    best = {k: n_bytes / min(v) / 1e9 for k, v in times.items()}
    huge = huge_page_fraction([buf])
    top = max(best, key=best.get)
    return {"gb_per_s": best[top], "gb_per_s_torch_sum": best["torch.sum"], "gb_per_s_read_sum": best.get("ml_read_sum"),
            "gb_per_s_median": n_bytes / statistics.median(times[top]) / 1e9,
            "gb_per_cpu_s": n_bytes / max(min(cpu), 1e-9) / 1e9, "cpu_share": statistics.median(shares),
            "huge_page_fraction": huge}
