"""One block of memory for the weights a fused decode step reads, in the order it reads them.

A decode step at batch 1 streams every weight once (SmolLM2-135M: 538 MB in float32, ~85 MB in
int4), so it is bound by memory bandwidth; the ~700 tensors the loader and ``quantize_`` leave
scattered over the heap each start a new stream for the hardware prefetcher and a new set of TLB
entries. :func:`pack_decode_weights` copies them, in the fused step's reading order (per layer:
the q/k/v group, o, the gate/up group, down, then the output layer; in each group the weights
first, then their scales, mins and biases), into one anonymous mapping aligned to 2 MiB and
advised for transparent huge pages (``madvise(MADV_HUGEPAGE)``, where the kernel allows it),
and points each tensor at its copy (``tensor.data = copy``: the same Parameter / buffer objects,
the same values bit for bit).

Each copy is its own ``torch.frombuffer`` storage over a slice of the mapping, not a view of one
shared storage, so everything that looks at storages sees independent tensors: safetensors saves
them (it refuses tensors that share a storage), ``copy.deepcopy`` and ``torch.save`` copy each one,
and the mapping lives until its last tensor is gone. A tensor whose storage anything else holds
(a view, a slice, a ``.data`` alias kept somewhere, a storage offset) is left where it is, so no
aliasing is broken.

:func:`moorelab.model.fused_decode.prepare_decode` calls it, and then the fused decode each time
it builds a plan for that model (``decode_weight_arena`` true); a model already packed in that
order is not copied again. Opt-in, not automatic: the use count sees other tensors on a storage,
not memory handed out from it (``weight.numpy()``, DLPack, raw pointers), which a move would
leave pointing at freed memory. Measured in one process, fused decode with and without it, interleaved:
``python benchmarks/bench_weight_arena.py``.
"""

from __future__ import annotations

import errno
import mmap
import weakref
from typing import Iterable, Iterator

import torch

__all__ = ["pack_decode_weights", "release_freed_heap", "hold_freed_heap", "huge_page_tensor", "huge_page_bytes", "ALIGN"]

#: bytes each tensor's copy is aligned to (a cache line; AVX2 loads of a row start aligned)
ALIGN = 64
_HUGE = 2 << 20
#: the blocks made so far and still mapped: (first byte, end, weak reference to the mapping)
_ARENAS: list[tuple[int, int, weakref.ref]] = []


def _sole_owner(t: torch.Tensor) -> bool:
    """``t`` is contiguous, covers its whole storage and no other tensor holds that storage (a view,
    a ``.data`` alias kept by someone): moving it would not break an alias. False when torch does
    not expose the storage's use count."""
    if t.device.type != "cpu" or not t.is_contiguous() or t.storage_offset() != 0 or t.numel() == 0:
        return False
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    s = t.untyped_storage()
    if use_count is None or s.nbytes() != t.numel() * t.element_size():
        return False
    return use_count(s._cdata) == 2  # t's and this wrapper's


def _slot_bytes(t: torch.Tensor) -> int:
    """Bytes ``t`` takes in a block: its size rounded up to :data:`ALIGN`."""
    return -(-t.numel() * t.element_size() // ALIGN) * ALIGN


def _huge_region(nbytes: int) -> tuple[mmap.mmap, memoryview, int, int]:
    """An anonymous private mapping of ``nbytes`` + 2 MiB, advised for transparent huge pages
    (``madvise(MADV_HUGEPAGE)``; where the kernel refuses, the memory is ordinary pages all the
    same): (mapping, a memoryview of it, its first byte's address, the offset of its first 2 MiB
    boundary). Raises OSError when ``mmap`` fails."""
    region = mmap.mmap(-1, nbytes + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(region)
    base = torch.frombuffer(view[:1], dtype=torch.uint8).data_ptr()
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE)
        except (OSError, ValueError):
            pass
    return region, view, base, (-base) % _HUGE


def huge_page_tensor(numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A new 1-D tensor of ``numel`` elements (zeros) on memory of its own, aligned to 2 MiB and
    advised for transparent huge pages, as :func:`pack_decode_weights` places the decode weights.

    Why: a bandwidth reference or a benchmark's weights must sit on the same kind of pages as the
    decode they are compared with. With ``/sys/kernel/mm/transparent_hugepage/enabled`` at
    ``madvise`` a plain ``torch.ones`` gets 4 KiB pages, each a TLB entry and a stop for the
    hardware prefetcher: on 2026-12-02 (Zen 4 host, 512 MiB, best of 3 passes of each reader, CPU
    share 1.00) it read at 28-31 GB/s on two threads and 24-25 on one, against 31-34 and 31-33 on
    huge pages, while the packed float32 decode read at 99-109% of the 4 KiB-page figure.
    The mapping lives as long as the tensor (its storage holds the buffer).

    Raises:
        ValueError: ``numel`` < 1.
        OSError: the mapping could not be made.
    """
    if numel < 1:
        raise ValueError(f"numel must be at least 1, got {numel}")
    esz = torch.empty(0, dtype=dtype).element_size()
    region, view, _, start = _huge_region(numel * esz)
    t = torch.frombuffer(view[start:start + numel * esz], dtype=torch.uint8).view(dtype)
    t.zero_()  # touch every page now (the faults belong to the allocation, not to a timed read)
    return t


def tensor_spans(tensors: torch.Tensor | Iterable[torch.Tensor]) -> list[tuple[int, int]]:
    """The address ranges [start, end) in bytes under ``tensors`` (contiguous tensors; one tensor or
    several), sorted, overlapping and touching ranges merged, so bytes two tensors share (a tensor
    and a view of it, a tensor listed twice) count once. Empty tensors give no range."""
    ts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    spans = sorted((t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()) for t in ts if t.numel())
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def smaps_mappings(smaps: str = "/proc/self/smaps") -> Iterator[tuple[int, int, dict[str, str]]]:
    """The mappings of a ``/proc/<pid>/smaps`` file: (first address, end address, its fields as
    ``{"AnonHugePages:": "2048 kB", "VmFlags:": "rd wr mr mw me ac hg", ...}``), in file order.
    Blank lines are skipped. Raises OSError when the file cannot be read, ValueError or IndexError
    when a mapping's header is not ``start-end ...`` in hex."""
    with open(smaps) as f:
        cur = None
        for line in f:
            parts = line.split(None, 1)
            if not parts:
                continue
            head = parts[0]
            if "-" in head and not head.endswith(":"):
                if cur is not None:
                    yield cur
                a, b = (int(x, 16) for x in head.split("-"))
                cur = (a, b, {})
            elif cur is not None:
                cur[2][head] = parts[1].strip() if len(parts) > 1 else ""
        if cur is not None:
            yield cur


def huge_page_bytes(tensors: torch.Tensor | Iterable[torch.Tensor], smaps: str = "/proc/self/smaps") -> int | None:
    """Bytes of the memory under ``tensors`` (one tensor or several; shared bytes counted once,
    :func:`tensor_spans`) that transparent huge pages back: for each mapping of ``smaps`` that
    overlaps them, its ``AnonHugePages`` clipped to the bytes of the tensors inside it (a
    mapping's huge pages are not located within it, so for a mapping larger than its tensors, such
    as the heap, this is an upper bound; the packed decode weights and :func:`huge_page_tensor`
    have mappings of their own). None where ``smaps`` cannot be read or parsed (not Linux).
    Divide by the tensors' bytes for the fraction a benchmark reports."""
    spans = tensor_spans(tensors)
    total = 0
    try:
        for a, b, fields in smaps_mappings(smaps):
            inside = sum(max(0, min(hi, b) - max(lo, a)) for lo, hi in spans)
            if inside and "AnonHugePages:" in fields:
                total += min(int(fields["AnonHugePages:"].split()[0]) * 1024, inside)
    except (OSError, ValueError, IndexError):
        return None
    return total


def _in_place(tensors: list[torch.Tensor]) -> bool:
    """The tensors already lie one after the other, aligned, from a 2 MiB boundary: as this module
    packs them (a heap allocation that happens to match is left as it is, a missed speed-up only)."""
    ptr = tensors[0].data_ptr()
    if ptr % _HUGE:
        return False
    for t in tensors:
        if t.data_ptr() != ptr:
            return False
        ptr += _slot_bytes(t)
    return True


def _in_arena(t: torch.Tensor) -> bool:
    """``t``'s memory lies in a block this module made (the registry pruned of unmapped blocks by
    the caller)."""
    ptr = t.data_ptr()
    return any(lo <= ptr < hi for lo, hi, _ in _ARENAS)


def pack_decode_weights(tensors: Iterable[torch.Tensor], others: Iterable[torch.Tensor] = ()) -> int:
    """Copy ``tensors`` (in this order) into one 2 MiB-aligned anonymous mapping and point each at its copy.

    Args:
        tensors: the weights in the order a decode step reads them (any dtypes, CPU). Repeats
            (the same tensor object twice, e.g. a tied weight) are packed once; tensors whose
            storage is held by anything else (views, slices, ``.data`` aliases) are skipped and
            keep their memory.
        others: the model's other tensors (e.g. all its parameters and buffers). Any of them
            still in an earlier block (a weight no longer read, e.g. a tied embedding after its
            output layer was quantized into a copy) is moved back to an ordinary allocation when
            it is the sole owner of its storage: one tensor left in a block keeps all of it mapped.

    Returns:
        The size of the new block in bytes (each tensor's size rounded up to 64), or 0 when every
        packable tensor is already in place in that order, or there is none.

    Raises:
        OSError: the block is larger than the memory available (``MemAvailable``) or the mapping
            could not be made (``mmap``).

    The copy is ``torch.frombuffer`` over a slice of the mapping (a storage per tensor), and the
    tensor is re-pointed with ``tensor.data = copy`` under ``torch.no_grad()`` (the copies are
    never inference tensors, even when called under ``torch.inference_mode()``): the same Python
    objects, gradient flags and values; pointers taken from the old storages before the call
    are stale after it.
    """
    others = list(others)
    seen: set[int] = set()
    unique = [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]
    if unique and _in_place(unique):  # the common case, a new plan for a packed model: no storage lookups
        return 0
    todo = [t for t in unique if _sole_owner(t)]
    if not todo or _in_place(todo):
        return 0
    sizes = [_slot_bytes(t) for t in todo]
    total = sum(sizes)
    avail = _available_bytes()
    if avail is not None and total > avail:
        raise OSError(errno.ENOMEM, f"weight arena: {total:,} bytes to pack, {avail:,} available")
    region, view, base, start = _huge_region(total)
    # registered before the copies: a pack that fails half way leaves its moved tensors in a known block
    _ARENAS[:] = [a for a in _ARENAS if a[2]() is not None]  # blocks since unmapped
    _ARENAS.append((base + start, base + start + total, weakref.ref(region)))
    off = start
    # not inference tensors even when called under torch.inference_mode(): the weights must stay
    # usable for training (requires_grad, autograd) afterwards
    with torch.inference_mode(False), torch.no_grad():
        for t, n in zip(todo, sizes):
            nbytes = t.numel() * t.element_size()
            copy = torch.frombuffer(view[off:off + nbytes], dtype=torch.uint8).view(t.dtype).view(t.shape)
            copy.copy_(t)
            t.data = copy
            off += n
        # earlier blocks: every tensor still in one keeps all of it mapped
        packed = {id(t) for t in todo}
        new_block = (base + start, base + start + total)
        for t in others:
            if (id(t) not in packed and not new_block[0] <= t.data_ptr() < new_block[1] and _in_arena(t)
                    and _sole_owner(t)):
                t.data = t.clone()
    release_freed_heap()
    return total


def _available_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes, or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _glibc():
    """glibc through ctypes, or None where there is none."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def release_freed_heap() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim(0)``): smaller tensors live in
    malloc's heap, which keeps freed pages resident, so without it a packed model's resident
    memory would stay at old + new copies (and a measurement's at what earlier work freed). A
    no-op where there is no glibc."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


#: glibc ``mallopt`` parameter codes (``malloc.h``)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the thresholds :func:`hold_freed_heap` sets, bytes (32 MiB is glibc's largest mmap threshold
#: on 64-bit)
HOLD_MMAP_THRESHOLD, HOLD_TRIM_THRESHOLD = 32 << 20, 64 << 20


def hold_freed_heap() -> bool:
    """Keep the activations' memory in the process between forward passes (glibc ``mallopt``:
    blocks up to :data:`HOLD_MMAP_THRESHOLD` come from malloc's heap instead of their own
    ``mmap``, and up to :data:`HOLD_TRIM_THRESHOLD` of free heap top stays mapped).

    Why: a 512-token float32 prefill of SmolLM2-135M allocates and frees tensors of 1-3 MB
    (activations, attention buffers) by the hundred. Under glibc's defaults (a dynamic mmap
    threshold that starts at 128 KB) many of them were fresh mappings, each page faulted in on
    first touch: 19,000-81,000 minor faults per prefill, against 0-36 with this, and 560-572
    against 631-648 prefill tokens/s (medians of 8 prefills in each of three or four processes,
    2 threads, a script outside the repository, 2026-12-01). The cost: freed blocks stay resident (the
    process's size after its largest pass, not after its last), which is what an inference
    process wants; :func:`release_freed_heap` still hands them back on request.

    Peak resident memory measured after it (``moorelab.measure.resources``, which trims the heap
    before each reset) counts freed blocks the heap keeps between passes, where glibc's defaults
    would have unmapped them: peak-memory figures taken before and after this change are not
    strictly comparable.

    Process-wide and permanent, like ``torch.set_num_threads``: called by
    :func:`moorelab.model.fused_decode.prepare_decode` after it packs the weights and hands freed
    pages back. Returns True when both thresholds were set; False where there is no glibc
    ``mallopt`` (nothing changed) or glibc refused one of them (the mmap threshold may then be set
    alone).
    """
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, HOLD_MMAP_THRESHOLD)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, HOLD_TRIM_THRESHOLD))
