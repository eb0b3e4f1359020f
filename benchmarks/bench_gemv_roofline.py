"""Is a decode GEMV held by its own instructions or by memory? One core, the shipped kernels, one run.

For the float32, int8 b32 and int4 g32 a8 decode rows (``ml_f32_rows``, ``ml_a8bw8_rows``,
``ml_w4q_rows`` with 8-bit activation blocks: the functions the fused decode runs on each thread,
called here straight through ctypes on the built library, one thread, no OpenMP), three figures
measured interleaved in each round:

* **in cache**: one SmolLM2-sized matrix that fits in L2 (int8: 576 x 576 = 324 KiB; float32:
  128 x 576 = 288 KiB; int4: 1,152 x 576 nibbles with float16 scales and minimums per 32 = 405
  KiB), called again and again: the kernel's own rate, in GB/s of weights read.
  The per-call overhead of ctypes (an empty call, ``n0 == n1``, timed the same way) is
  subtracted.
* **streamed**: the same kernel over 256 MiB of such matrices taken in turn (views into one
  contiguous tensor, as the fused decode's weights lie packed in one block), so every call reads
  its weights from memory, as decode does; the same per-call overhead is subtracted.
* **reference**: a read of 256 MiB on one thread, the faster of ``torch.sum`` and ``ml_read_sum``,
  best of 3 passes each (:func:`moorelab.measure.bandwidth.read_bandwidth`: the same core's read
  bandwidth at that moment, as the decode benchmarks measure it).

The reference buffer and every streamed and in-cache matrix lie on mappings of their own, 2 MiB
aligned and advised for transparent huge pages (:func:`moorelab.model.weight_arena.huge_page_tensor`,
as the packed decode weights); the run prints the share of each on huge pages and the host's
THP setting (``huge_pages`` and ``thp_setting`` in the JSON).

Each figure is the median of its rounds kept at CPU share >= 0.9
(:class:`moorelab.measure.speed.CpuShareClock`; all rounds, marked "disturbed", when none was).
The printed ratios say which bound holds: streamed / reference near 1 means the kernel reads at
the core's bandwidth; in-cache well above streamed means the instructions are not the limit; an
in-cache rate near the streamed one means they are.

"One core" is the calling thread, not pinned; "fits in L2" needs at least 405 KiB of L2 per
core. GB/s count the bytes a decode step reads (int4: the nibbles, scales and minimums). A
float32 call in cache takes a few microseconds against ~1 of call overhead, so that figure is
the least steady; a round whose call took no longer than the empty call is dropped
(reported as such) rather than given an absurd rate.

Usage: python benchmarks/bench_gemv_roofline.py [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moorelab import kernels  # noqa: E402
from moorelab.measure.bandwidth import huge_page_fraction, read_bandwidth, reference_buffer, thp_setting  # noqa: E402
from moorelab.model.weight_arena import huge_page_tensor  # noqa: E402
from moorelab.measure.speed import CPU_SHARE_MIN, CpuShareClock  # noqa: E402

K = 576
STREAM_BYTES = 256 << 20


def _lib():
    klib = kernels.get_library()
    if klib is None:
        raise SystemExit(f"no kernel library: {kernels.status()}")
    lib = ctypes.CDLL(str(klib.path))
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.ml_f32_rows.restype = None
    lib.ml_f32_rows.argtypes = [vp, i64, vp, vp, vp, i64, i64]
    lib.ml_a8b_prep.restype = None
    lib.ml_a8b_prep.argtypes = [vp, i64, vp, vp]
    lib.ml_a8bw8_rows.restype = None
    lib.ml_a8bw8_rows.argtypes = [vp, vp, i64, vp, vp, vp, vp, i64, i64]
    lib.ml_w4q_prep.restype = None
    lib.ml_w4q_prep.argtypes = [ctypes.c_int, vp, i64, i64, vp, vp, vp]
    lib.ml_w4q_rows.restype = None
    lib.ml_w4q_rows.argtypes = [ctypes.c_int, vp, vp, vp, i64, i64, vp, vp, vp, vp, vp, i64, i64]
    return lib


def on_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """``t``'s values in a tensor of the same shape on memory advised for huge pages."""
    out = huge_page_tensor(t.numel(), t.dtype).view(t.shape)
    out.copy_(t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    lib = _lib()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(K, generator=g)
    xq, bs = torch.empty(K, dtype=torch.int8), torch.empty(K // 32)
    lib.ml_a8b_prep(x.data_ptr(), K, xq.data_ptr(), bs.data_ptr())
    xq4, bs4, xsum4 = torch.empty(K, dtype=torch.int8), torch.empty(K // 32), torch.empty(K // 32)
    lib.ml_w4q_prep(8, x.data_ptr(), K, 32, xq4.data_ptr(), bs4.data_ptr(), xsum4.data_ptr())
    y = torch.empty(4096)
    scale = torch.full((4096,), 0.01)
    ngr = K // 32

    # matrices stacked to fill STREAM_BYTES; int4 g32: nibbles [count, n, K/2] uint8, scales and
    # minimums float16 [count, n, K/32]
    n8, nf, n4 = 576, 128, 1152
    b8, bf, b4 = n8 * K, nf * K * 4, n4 * K // 2 + 2 * n4 * ngr * 2
    c8, cf, c4 = STREAM_BYTES // b8, STREAM_BYTES // bf, STREAM_BYTES // b4
    # each on its own 2 MiB-aligned mapping advised for huge pages, as the fused decode's packed
    # weights and the reference buffer (moorelab.model.weight_arena.huge_page_tensor)
    w8 = on_huge_pages(torch.randint(-127, 128, (c8, n8, K), dtype=torch.int8, generator=g))
    wf = on_huge_pages(torch.randn(cf, nf, K, generator=g))
    w4 = on_huge_pages(torch.randint(0, 256, (c4, n4, K // 2), dtype=torch.uint8, generator=g))
    s4 = on_huge_pages((torch.rand(c4, n4, ngr, generator=g) * 0.01).half())
    m4 = on_huge_pages((-torch.rand(c4, n4, ngr, generator=g) * 0.05).half())
    # name -> (bytes per matrix, rows per matrix, matrices, call(i, n): rows [0, n) of matrix i)
    kinds = {
        "int8 b32": (b8, n8, c8, lambda i, n: lib.ml_a8bw8_rows(
            xq.data_ptr(), bs.data_ptr(), K, w8[i].data_ptr(), scale.data_ptr(), None, y.data_ptr(), 0, n)),
        "float32": (bf, nf, cf, lambda i, n: lib.ml_f32_rows(
            x.data_ptr(), K, wf[i].data_ptr(), None, y.data_ptr(), 0, n)),
        "int4 g32 a8": (b4, n4, c4, lambda i, n: lib.ml_w4q_rows(
            8, xq4.data_ptr(), bs4.data_ptr(), xsum4.data_ptr(), K, 32, w4[i].data_ptr(), s4[i].data_ptr(),
            m4[i].data_ptr(), None, y.data_ptr(), 0, n)),
    }
    ref_buf = reference_buffer(STREAM_BYTES)
    huge = {name: huge_page_fraction(ts) for name, ts in
            (("reference", [ref_buf]), ("float32", [wf]), ("int8 b32", [w8]), ("int4 g32 a8", [w4, s4, m4]))}
    print(f"on transparent huge pages (host setting {thp_setting()}): "
          + ", ".join(f"{k} {'?' if v is None else f'{v:.0%}'}" for k, v in huge.items()), flush=True)
    clock = CpuShareClock()
    rec: dict[str, list[tuple[float, float]]] = {}

    def timed(fn, reps: int, inner: int = 20) -> tuple[float, float]:
        """seconds per call (the median over reps samples of inner back-to-back calls), CPU share over them"""
        ts = []
        clock.start()
        for _ in range(reps):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            ts.append((time.perf_counter() - t0) / inner)
        return statistics.median(ts), clock.stop()

    for rnd in range(a.rounds):
        r = read_bandwidth(buf=ref_buf, reps=3, threads=1)
        rec.setdefault("reference read", []).append((r["gb_per_s"], r["cpu_share"]))
        for name, (nbytes, n, count, call) in kinds.items():
            empty, sh_e = timed(lambda: call(0, 0), 40)
            for _ in range(20):
                call(0, n)  # warm: the matrix into cache
            t, sh = timed(lambda: call(0, n), 40)
            if t > empty:
                rec.setdefault(f"{name} in cache", []).append((nbytes / (t - empty) / 1e9, min(sh, sh_e)))
            else:
                print(f"round {rnd + 1}: {name} in cache took no longer than an empty call; round dropped")
            clock.start()
            t0 = time.perf_counter()
            for i in range(count):
                call(i, n)
            # empty went through one more Python frame (timed's lambda): < 0.1 us over-subtracted per call
            dt = time.perf_counter() - t0 - empty * count
            rec.setdefault(f"{name} streamed", []).append((nbytes * count / dt / 1e9, min(clock.stop(), sh_e)))
        print(f"round {rnd + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1][0]:.1f} GB/s (share {v[-1][1]:.2f})"
                                                         for k, v in rec.items()), flush=True)

    med = {}
    for k, v in rec.items():
        kept = [r for r in v if r[1] >= CPU_SHARE_MIN]
        use = kept or v  # none kept: every round, marked disturbed
        med[k] = {"gb_per_s": statistics.median(r[0] for r in use), "kept": len(kept), "rounds": len(v),
                  "cpu_share": statistics.median(r[1] for r in use)}
    ref = med["reference read"]["gb_per_s"]
    print(f"\none core, {kernels.status()}; medians of rounds at CPU share >= {CPU_SHARE_MIN}")
    print(f"{'measure':24s} {'GB/s':>7s} {'/ reference':>12s} {'kept':>6s}")
    for k, v in med.items():
        flag = "" if v["kept"] else "  disturbed"
        print(f"{k:24s} {v['gb_per_s']:7.1f} {v['gb_per_s'] / ref:12.2f} {v['kept']:>3d}/{v['rounds']}{flag}")
    for name in kinds:
        if f"{name} in cache" not in med:
            print(f"{name}: no in-cache round measured (every call as short as an empty one)")
            continue
        ic, st = med[f"{name} in cache"]["gb_per_s"], med[f"{name} streamed"]["gb_per_s"]
        print(f"{name}: in cache / streamed {ic / st:.2f}, streamed / reference {st / ref:.2f}")
    if a.json:
        a.json.write_text(json.dumps({"status": kernels.status(), "rounds": rec, "medians": med, "huge_pages": huge,
                                      "thp_setting": thp_setting()}, indent=1))


if __name__ == "__main__":
    main()
