"""The float32 decode's weight stream taken apart on synthetic stages: what the stage structure,
the row kernel and the weights' layout each cost against a plain read of the same bytes.

``benchmarks/csrc/f32_layouts.c`` (compiled here with gcc and moorelab's kernel flags, together
with ``moorelab/kernels/csrc/f32_gemv.c`` and ``read_bw.c``: the row stream and the read are the
real kernels) lays out 30 SmolLM2-135M-shaped layers (q/k/v 960 x 576, o 576 x 576, gate/up
3,072 x 576, down 576 x 1,536) and the 49,152 x 576 output layer, 537.9 MB of float32 on huge
pages where the host allows, in 121 stages, and reads them five ways (the arms):

* ``read whole``: ``ml_read_sum`` over the whole buffer, one stream per thread — the limit the
  decode benchmarks divide by;
* ``read stages + barriers``: each thread sums its contiguous rows of each stage, an OpenMP
  barrier after each stage (the fused decode's structure with four stages per layer where it
  has five, attention being one more; no arithmetic);
* ``read stages``: the same without the barriers;
* ``f32 row stream``: ``ml_f32_rows`` (the float32 decode's kernel, [N, K] row-major) on each
  thread's rows of each stage, a barrier after each;
* ``f32 32-row panels``: the same products from a [N / 32][K][32] layout (one broadcast of
  ``x[k]`` for 32 weights, no per-row horizontal sum) — a prototype: moorelab's float32 weights
  stay [N, K], which torch's prefill matmul reads.

Each iteration runs the five arms once each, in an order rotated every iteration, with the CPU
share of the iteration (:class:`moorelab.measure.speed.CpuShareClock`); iterations below a
share of 0.9 are dropped (counted). The host's read rate changes between and within runs, so
every ratio is paired inside one iteration and the iterations are grouped by the rate the
``read whole`` arm measured in them (below / at or above ``--fast`` GB/s). Printed per group:
the median GB/s of each arm, and the medians of the paired ratios against ``read whole`` and
against the row stream. The panel kernel's output-layer products are checked against the row
stream's first (relative difference printed; float32 rounding, different order of sums).

What the panels would cost prefill (``--prefill-rounds``, 0 to skip): on each SmolLM2 matrix shape,
``X @ W.T`` (torch's mm on [N, K], M = 512 prompt rows) against the same products through
``torch.matmul(X, W_panels)`` (a batched [M, K] x [K, 32] per panel, then the [N / 32, M, 32]
result put back in [M, N] order), paired per round; printed: the median of panel time / mm time.

Usage: python benchmarks/bench_f32_layouts.py [--threads 2] [--iters 600] [--fast 40] [--prefill-rounds 7]
"""

from __future__ import annotations

import argparse
import ctypes
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moorelab.kernels import build  # noqa: E402
from moorelab.measure.speed import CpuShareClock  # noqa: E402

ARMS = ("read whole", "read stages + barriers", "read stages", "f32 row stream", "f32 32-row panels")


def compile_library(out_dir: Path) -> Path:
    """Compile ``benchmarks/csrc/f32_layouts.c`` with the kernels' two real files into ``out_dir``.

    Raises:
        SystemExit: gcc is missing or the compile failed (its first lines printed).
    """
    gcc = build.find_gcc()
    if gcc is None:
        raise SystemExit("bench_f32_layouts.py needs gcc on PATH")
    out = out_dir / "libf32_layouts.so"
    src = out_dir / "src"  # the three files in one folder: the kernels' own compile command builds it
    src.mkdir()
    for f in (ROOT / "benchmarks" / "csrc" / "f32_layouts.c", build.CSRC / "f32_gemv.c", build.CSRC / "read_bw.c"):
        shutil.copy(f, src / f.name)
    cmd = build.compile_command(gcc, out, src, extra_flags=[f"-I{build.CSRC}"])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise SystemExit("gcc failed: " + " ".join(cmd) + "\n" + "\n".join(res.stderr.splitlines()[:10]))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--fast", type=float, default=40.0, help="GB/s of 'read whole' that splits the two groups")
    ap.add_argument("--prefill-rounds", type=int, default=7)
    a = ap.parse_args(argv)
    flags = build.cpu_flags()
    if not {"avx2", "fma"} <= flags:
        raise SystemExit("bench_f32_layouts.py needs a CPU with AVX2 and FMA")
    torch.set_num_threads(a.threads)
    lib = ctypes.CDLL(str(compile_library(Path(tempfile.mkdtemp(prefix="moorelab-f32-layouts-")))))
    lib.lay_setup.restype = ctypes.c_int64
    lib.lay_check.restype = ctypes.c_double
    lib.lay_step.restype = ctypes.c_double
    lib.lay_step.argtypes = [ctypes.c_int, ctypes.c_int]
    nbytes = lib.lay_setup()
    if nbytes < 0:
        raise SystemExit("lay_setup: out of memory (two copies of 538 MB)")
    diff = lib.lay_check()
    lib.lay_ptr.restype = ctypes.c_size_t
    lib.lay_ptr.argtypes = [ctypes.c_int]
    from moorelab.measure.bandwidth import huge_page_fraction, thp_setting

    for m in range(len(ARMS)):  # warm: page in both layouts
        lib.lay_step(m, a.threads)
    views = [torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(lib.lay_ptr(w)), dtype=torch.uint8)
             for w in (0, 1)]
    huge = [huge_page_fraction([v]) for v in views]
    huge_s = "unknown (no smaps)" if None in huge else f"rows {huge[0]:.0%}, panels {huge[1]:.0%}"
    print(f"{nbytes / 1e6:.1f} MB per layout, 121 stages, {a.threads} threads, {a.iters} iterations; "
          f"on huge pages: {huge_s} (host setting {thp_setting()}); "
          f"panels vs row stream on the output layer: max relative difference {diff:.1e}", flush=True)
    if not diff < 1e-4:
        raise SystemExit(f"the panel kernel's products differ from the row stream's by {diff:.1e}")
    clock = CpuShareClock()
    rows: list[list[float]] = []
    dropped = 0
    for it in range(a.iters):
        t = [0.0] * len(ARMS)
        clock.start()
        for j in range(len(ARMS)):
            m = (j + it) % len(ARMS)
            t[m] = lib.lay_step(m, a.threads)
        if clock.stop() < 0.9:
            dropped += 1
            continue
        rows.append(t)
    print(f"iterations kept at CPU share >= 0.9: {len(rows)} of {a.iters} (dropped {dropped})")
    groups = {f"read whole < {a.fast:g} GB/s": [r for r in rows if nbytes / r[0] / 1e9 < a.fast],
              f"read whole >= {a.fast:g} GB/s": [r for r in rows if nbytes / r[0] / 1e9 >= a.fast]}
    for name, sel in groups.items():
        print(f"\n{name}: {len(sel)} iterations")
        if not sel:
            continue
        print(f"  {'arm':24s} {'GB/s':>6s} {'/ read whole':>13s} {'/ row stream':>13s}")
        for m, arm in enumerate(ARMS):
            gbs = statistics.median(nbytes / r[m] / 1e9 for r in sel)
            vs_whole = statistics.median(r[0] / r[m] for r in sel)
            vs_rows = statistics.median(r[3] / r[m] for r in sel)
            print(f"  {arm:24s} {gbs:6.1f} {vs_whole:13.3f} {vs_rows:13.3f}")
    if a.prefill_rounds > 0:
        prefill_check(a.prefill_rounds)
    return 0


def prefill_check(rounds: int, m_rows: int = 512, panel: int = 32) -> None:
    """Print, per SmolLM2-135M matrix shape, the median over ``rounds`` of (time of the products
    through ``panel``-row panels with torch.matmul) / (time of ``X @ W.T``), ``X`` [m_rows, K]."""
    print(f"\nprefill on the panels: torch.matmul over [N / {panel}][K][{panel}] / X @ W.T, M = {m_rows}, "
          f"{torch.get_num_threads()} threads, median of {rounds} paired rounds")
    clock = CpuShareClock()
    for n, k in ((960, 576), (576, 576), (3072, 576), (576, 1536), (49152, 576)):
        w = torch.randn(n, k)
        x = torch.randn(m_rows, k)
        wp = w.reshape(n // panel, panel, k).transpose(1, 2).contiguous()  # [N / P, K, P]

        def panels():
            return torch.matmul(x.unsqueeze(0), wp).permute(1, 0, 2).reshape(m_rows, n)

        ref = x @ w.T
        if not torch.allclose(panels(), ref, rtol=1e-4, atol=1e-3):
            raise SystemExit(f"panel products differ from X @ W.T at N={n}, K={k}")
        ratios, shares = [], []
        for _ in range(rounds):
            clock.start()
            t0 = time.perf_counter()
            x @ w.T
            t1 = time.perf_counter()
            panels()
            t2 = time.perf_counter()
            shares.append(clock.stop())
            ratios.append((t2 - t1) / (t1 - t0))
        print(f"  N {n:6d} K {k:5d}: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}, "
              f"CPU share {min(shares):.2f}-{max(shares):.2f})")


if __name__ == "__main__":
    raise SystemExit(main())
