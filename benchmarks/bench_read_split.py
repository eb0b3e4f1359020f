"""Where the float32 decode loses to the read-bandwidth limit: the step taken apart, in one process.

SmolLM2-135M in float32, its decode weights packed by ``prepare_decode`` (on huge pages where the
host allows), ``--threads`` threads. Each round runs, interleaved (order reversed every other
round), the best of 3 of:

* ``read_sum reference``: ``ml_read_sum`` over the bandwidth reference buffer (512 MiB,
  :func:`moorelab.measure.bandwidth.reference_buffer`) — the limit the decode benchmarks divide by;
* ``read_sum weights``: ``ml_read_sum`` over the packed decode weights themselves (538 MB);
* ``fused step``: the fused float32 decode step (``--steps`` steps, each on the same token,
  Python included, inside ``fused_decode.steady``), as GB/s of the decode weights;
* ``f32 rows, every matrix``: ``ml_f32_linear`` (M = 1: each thread one contiguous half of the
  rows through the decode's row kernel) on every float32 matrix of the step in reading order, a
  fork and join each;
* ``f32 rows, output layer``: the same on the largest matrix alone (the 49,152 x 576 output
  layer, 113 MB), one long stream per thread;
* ``read_sum output layer``: ``ml_read_sum`` over those same 113 MB.

Printed: each arm's median GB/s and CPU share (:class:`moorelab.measure.speed.CpuShareClock`),
and per round the ratios that split the gap: weights / reference (is the reference the weights'
own limit), output-layer rows / read_sum on the same bytes (the row kernel on one long stream),
every matrix / output-layer rows (the cost of many short streams), fused step / read_sum weights
(all of it). A ratio is only read from rounds whose arms all ran at CPU share >= 0.9.

Usage: python benchmarks/bench_read_split.py [--threads 2] [--rounds 8] [--steps 24]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moorelab import kernels  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24)
    a = ap.parse_args(argv)
    klib = kernels.get_library()
    if klib is None:
        raise SystemExit(f"bench_read_split.py needs the compiled kernels: {kernels.status()}")
    from moorelab.measure.bandwidth import reference_buffer, thp_setting
    from moorelab.measure.speed import CpuShareClock
    from moorelab.model import decode
    from moorelab.model.fused_decode import decode_weights, prepare_decode, steady
    from moorelab.model.transformer import KVCache
    from moorelab.model.weight_arena import huge_page_bytes, tensor_spans
    from moorelab.model.zoo import load_pretrained

    torch.set_num_threads(a.threads)
    nt = a.threads
    m = load_pretrained("smollm2-135m").model.eval()
    prepare_decode(m)
    ws = decode_weights(m)
    if not ws:
        raise SystemExit("the fused decode does not run this model here: nothing to take apart")
    w_bytes = sum(hi - lo for lo, hi in tensor_spans(ws))
    w_lo, w_hi = min(lo for lo, _ in tensor_spans(ws)), max(hi for _, hi in tensor_spans(ws))
    mats = [t for t in ws if t.dim() == 2 and t.dtype is torch.float32]
    mats_bytes = sum(t.numel() * 4 for t in mats)
    head = max(mats, key=lambda t: t.numel())
    ref = reference_buffer(512 << 20)
    x = torch.randn(max(t.shape[1] for t in mats))
    y = torch.empty(max(t.shape[0] for t in mats))
    cache = KVCache(max_len=a.steps + 2)
    tok = torch.tensor([[42]])
    lib = klib.lib

    def rows(ts):
        for t in ts:
            lib.ml_f32_linear(x.data_ptr(), 1, t.shape[1], t.data_ptr(), None, y.data_ptr(), t.shape[0], nt)

    def fused():
        cache.length = 0
        with torch.inference_mode(), steady(m):
            for _ in range(a.steps):
                decode.forward(m, tok, cache=cache)

    # name -> (call, bytes it reads per call, calls it stands for)
    arms = {
        "read_sum reference": (lambda: klib.read_sum(ref.data_ptr(), ref.numel(), nt), ref.numel() * 4, 1),
        # the gaps between tensors (64-byte slots) are read too: w_hi - w_lo bytes
        "read_sum weights": (lambda: klib.read_sum(w_lo, (w_hi - w_lo) // 4, nt), (w_hi - w_lo) // 4 * 4, 1),
        "fused step": (fused, w_bytes, a.steps),
        "f32 rows, every matrix": (lambda: rows(mats), mats_bytes, 1),
        "f32 rows, output layer": (lambda: rows([head]), head.numel() * 4, 1),
        "read_sum output layer": (lambda: klib.read_sum(head.data_ptr(), head.numel(), nt), head.numel() * 4, 1),
    }
    print(f"SmolLM2-135M float32, {nt} threads; decode weights {w_bytes / 1e6:.1f} MB "
          f"({huge_page_bytes(ws) / w_bytes:.0%} on huge pages, host setting {thp_setting()}), "
          f"{len(mats)} float32 matrices, output layer {tuple(head.shape)} {head.numel() * 4 / 1e6:.1f} MB; "
          f"{a.rounds} interleaved rounds, best of 3 each")
    for f, _, _ in arms.values():
        f()
    clock = CpuShareClock()
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
    for r in range(a.rounds):
        for k in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            f, nb, calls = arms[k]
            clock.start()
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                f()
                best = min(best, (time.perf_counter() - t) / calls)
            res[k].append((nb / best / 1e9, clock.stop()))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} GB/s ({v[-1][1]:.2f})" for k, v in res.items()),
              flush=True)
    print(f"\n{'arm':24s} {'median GB/s':>11s} {'range':>13s} {'CPU share':>11s}")
    for k, v in res.items():
        g = [x for x, _ in v]
        print(f"{k:24s} {statistics.median(g):11.1f} {min(g):6.1f}-{max(g):<6.1f} "
              f"{min(s for _, s in v):.2f}-{max(s for _, s in v):.2f}")
    kept = [i for i in range(a.rounds) if all(v[i][1] >= 0.9 for v in res.values())]
    print(f"ratios per round (rounds kept at CPU share >= 0.9: {len(kept)} of {a.rounds}); median")
    for name, num, den in (("weights / reference", "read_sum weights", "read_sum reference"),
                           ("output-layer rows / read_sum same bytes", "f32 rows, output layer", "read_sum output layer"),
                           ("every matrix / output-layer rows", "f32 rows, every matrix", "f32 rows, output layer"),
                           ("fused step / read_sum weights", "fused step", "read_sum weights")):
        rs = [res[num][i][0] / res[den][i][0] for i in kept]
        if rs:
            print(f"  {name:40s} {' '.join(f'{x:.2f}' for x in rs)}; median {statistics.median(rs):.3f}")
    print("bandwidth state per round (read_sum reference, GB/s): "
          + " ".join(f"{res['read_sum reference'][i][0]:.0f}" for i in range(a.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
