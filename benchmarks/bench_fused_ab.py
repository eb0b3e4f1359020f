"""A/B of the fused decode step against an older build of the kernel library, in one process.

Both libraries run ``ml_decode_layers`` on the same SmolLM2-135M-shaped layers (30 layers,
d_model 576, 9 query / 3 key-value heads of 64, SwiGLU 1536; random float32, int8-per-row
or int4 g32 weights), the same hidden state and the same cache contents, at ``--depths``; calls alternate
between the libraries (interleaved, so both see the same machine load). Reported per row: median
wall and process-CPU milliseconds per step (all 30 layers, no lm_head) and the ratio old / new.
The new library also runs with a float16 KV cache.

The old library is any earlier build whose ``ml_layer`` has the same size (ABI 8 and later:
its last int32 field was padding, now the cache type flag, which the old code ignores). Build it
from an older checkout, e.g. ``git archive 2a10276 | tar -x -C /tmp/old`` and
``PYTHONPATH=/tmp/old python -c "from moorelab.kernels import build; from moorelab.paths import
cache_dir; print(build.build(cache_dir())[0])"``.

Usage: python benchmarks/bench_fused_ab.py --old /path/to/old/libmoorelab_quant.so
       [--threads 2] [--depths 1,4096] [--steps 20] [--weights f32|int8|int8-b32|int4-a8]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moorelab import kernels  # noqa: E402

D, H, HKV, HD, F, NL = 576, 9, 3, 64, 1536, 30


def make_layers(weights: str, cap: int, kv_dtype: torch.dtype, keep: list, threads: int):
    g = torch.Generator().manual_seed(0)
    layers = (kernels.MlLayer * NL)()
    for i in range(NL):
        ly = layers[i]
        for name, (n, k) in {"q": (H * HD, D), "k": (HKV * HD, D), "v": (HKV * HD, D), "o": (D, H * HD),
                             "gate": (F, D), "up": (F, D), "down": (D, F)}.items():
            if weights == "f32":
                w = torch.randn(n, k, generator=g) * 0.05
                lin = kernels.MlLin(kernels.LIN_KINDS["f32"], threads, n, k, 0, w.data_ptr(), None, None, None)
                keep.append(w)
            elif weights == "int4-a8":  # int4 in groups of 32 (float16 scale and min each), int8 activation blocks
                w = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8)
                s = (torch.rand(n, k // 32, generator=g) * 0.01 + 0.005).to(torch.float16)
                mn = (-8 * s.float()).to(torch.float16)
                lin = kernels.MlLin(kernels.LIN_KINDS["int4-a8"], threads, n, k, 32, w.data_ptr(), s.data_ptr(),
                                    mn.data_ptr(), None)
                keep += [w, s, mn]
            else:  # int8 weights, one float32 scale per row: float activations (int8) or rounded per 32 (int8-b32)
                w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
                s = torch.full((n,), 0.05 / 64)
                kind = kernels.LIN_KINDS["int8" if weights == "int8" else "int8-dynamic-b32"]
                lin = kernels.MlLin(kind, threads, n, k, 0, w.data_ptr(), s.data_ptr(), None, None)
                keep += [w, s]
            setattr(ly, name, lin)
        an, fn = torch.ones(D), torch.ones(D)
        kc = (torch.randn(HKV, cap, HD, generator=g)).to(kv_dtype)
        vc = (torch.randn(HKV, cap, HD, generator=g)).to(kv_dtype)
        keep += [an, fn, kc, vc]
        ly.attn_norm, ly.ffn_norm, ly.kc, ly.vc, ly.cap = an.data_ptr(), fn.data_ptr(), kc.data_ptr(), vc.data_ptr(), cap
        ly.H, ly.Hkv, ly.hd, ly.rope, ly.eps, ly.kv_f16 = H, HKV, HD, 1, 1e-5, int(kv_dtype is torch.float16)
    return layers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depths", default="1,4096")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--weights", choices=["f32", "int8", "int8-b32", "int4-a8"], default="int8",
                    help="int8-b32: int8 weights against activations rounded to int8 per block of 32 (the "
                         "8-bit row of bench_vs_llamacpp.py; old builds from ABI 12 on, f0b0376); int4-a8: int4 "
                         "weights in groups of 32 against int8 activation blocks (the 4-bit row)")
    ap.add_argument("--old-signature", choices=["layers", "head"], default="layers",
                    help="the old build's ml_decode_layers: 'layers' (8 arguments, builds before ef651d9) or "
                         "'head' (with the final norm and lm_head arguments)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    new = kernels.get_library().lib
    old = ctypes.CDLL(str(args.old))
    vp, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    f32p = ctypes.c_float
    # since ef651d9 ml_decode_layers also takes the final norm, its eps, the lm_head and the logits
    # (NULL: layers only, as here), since ABI 20 (2026-12-03) also the greedy next-token output
    # (NULL); builds before ef651d9 take the first 8 arguments
    sig8 = [vp, i32, i64, vp, i64, vp, vp, i32]
    head4 = [vp, f32p, vp, vp]
    old.ml_decode_layers.restype = new.ml_decode_layers.restype = ctypes.c_int
    old.ml_decode_layers.argtypes = sig8 + (head4 if args.old_signature == "head" else [])
    new.ml_decode_layers.argtypes = sig8 + head4 + [vp]
    extra = {id(old): (None, 0.0, None, None) if args.old_signature == "head" else (),
             id(new): (None, 0.0, None, None, None)}
    old.ml_fused_abi.restype = ctypes.c_int
    assert old.ml_fused_abi() == new.ml_fused_abi(), "the old library's ml_layer differs in size"
    cos, sin = torch.ones(HD), torch.zeros(HD)
    print(f"fused decode step, {NL} SmolLM2-shaped layers, {args.weights} weights, {args.threads} threads, "
          f"median of {args.steps} interleaved steps (no lm_head)")
    print(f"{'depth':>6s} {'library':18s} {'wall ms':>8s} {'CPU ms':>8s} {'old/new wall':>12s} {'old/new CPU':>11s} "
          f"{'CPU share':>9s}")
    for depth in [int(d) for d in args.depths.split(",")]:
        keep: list = []
        cap = depth + 8
        variants = {"old (kv f32)": (old, make_layers(args.weights, cap, torch.float32, keep, args.threads)),
                    "new (kv f32)": (new, make_layers(args.weights, cap, torch.float32, keep, args.threads)),
                    "new (kv f16)": (new, make_layers(args.weights, cap, torch.float16, keep, args.threads))}
        x0 = torch.randn(D, generator=torch.Generator().manual_seed(1))
        times = {k: ([], []) for k in variants}
        wall_all = cpu_all = 0.0
        for step in range(args.steps + 1):
            for k, (lib, layers) in variants.items():
                x = x0.clone()
                t, c = time.perf_counter(), time.process_time()
                rc = lib.ml_decode_layers(ctypes.addressof(layers), NL, D, x.data_ptr(), depth - 1, cos.data_ptr(),
                                          sin.data_ptr(), args.threads, *extra[id(lib)])
                dt, dc = time.perf_counter() - t, time.process_time() - c
                assert rc == 0, rc
                if step:  # the first call of each warms up
                    times[k][0].append(dt)
                    times[k][1].append(dc)
                    wall_all += dt * args.threads
                    cpu_all += dc
        share = cpu_all / wall_all
        ow, oc = (statistics.median(v) for v in times["old (kv f32)"])
        for k, (w, c) in times.items():
            mw, mc = statistics.median(w), statistics.median(c)
            print(f"{depth:6d} {k:18s} {1e3 * mw:8.2f} {1e3 * mc:8.2f} {ow / mw:12.2f} {oc / mc:11.2f} {share:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
