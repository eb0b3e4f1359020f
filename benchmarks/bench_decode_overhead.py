"""What a fused decode step spends outside its C call, and why: the Python around
``ml_decode_layers`` on a cold cache against the same Python on a warm one.

SmolLM2-135M at each precision of ``bench_vs_llamacpp.py`` (float32, int8 dynamic b32, int4 g32
a8), decode weights packed by ``prepare_decode``, ``--threads`` threads, decoding as that benchmark
does (``decode.forward(m, x, cache, greedy_into=x.view(-1))`` inside ``fused_decode.steady``). The
kernel library's ``decode_layers`` is wrapped by a timer, so each step is split into:

* ``pre``: from the end of the previous step (its pick) to the C call (``decode.forward`` and ``decode_step``
  up to the call: plan checks, the token's embedding row, the logits buffer, the call's arguments);
* ``call``: the C call (every layer and the output layer);
* ``post``: from the call's return to ``decode.forward``'s (return code, cache length);
* ``argmax``: picking the next token from the 49,152 logits after ``decode.forward`` returned
  (``torch`` only; the other arms pick inside the C call, ``decode.forward``'s ``greedy_into``).

Four arms per precision, interleaved per round: ``real`` (the step as it runs), ``torch`` (the
same with torch's ``argmax`` picking the token after the call, as every decode loop did before
2026-12-03), ``warm`` (the C call replaced by a no-op: the same Python with its objects left in
the caches), ``evict`` (the C call replaced by ``ml_read_sum`` over a 512 MiB buffer: no decode,
but the caches flushed as a weight stream flushes them; ``warm`` and ``evict`` run ``real``'s
Python, ``greedy_into`` included). If ``evict``'s Python costs what ``real``'s does, the time
outside the call is the caches the weight stream evicted, not the decode's own bookkeeping.
Medians over steps and rounds, with the CPU share of each arm
(:class:`moorelab.measure.speed.CpuShareClock`). Then, per round and precision, steps with and
without the pick alternate (its cost inside the call: the median paired difference of adjacent
steps' call times), and ``ml_argmax_rows`` alone is timed right after a 512 MiB read and again at
once.

Printed: the parts' medians and the whole step's per arm; per precision the pick's cost inside
the call and the paired ratio, per round, of the step with torch's argmax to the step with the
pick inside the call; the argmax kernel's time cold and warm.

Usage: python benchmarks/bench_decode_overhead.py [--threads 2] [--rounds 4] [--steps 64]
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

SPECS = {"float32": None, "8-bit": "int8-dynamic:activation_block=32", "4-bit": "int4:group_size=32,activation_bits=8"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args(argv)
    klib = kernels.get_library()
    if klib is None:
        raise SystemExit(f"bench_decode_overhead.py needs the compiled kernels: {kernels.status()}")
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.measure.bandwidth import reference_buffer
    from moorelab.measure.speed import CpuShareClock
    from moorelab.model import decode
    from moorelab.model.fused_decode import prepare_decode, steady
    from moorelab.model.transformer import KVCache
    from moorelab.model.zoo import load_pretrained

    torch.set_num_threads(a.threads)
    real = klib.decode_layers
    buf = reference_buffer(512 << 20)
    stamp: dict[str, float] = {}
    pc = time.perf_counter

    def make(kind):
        def call(*args):
            stamp["s"] = pc()
            if kind in ("real", "torch"):
                rc = real(*args)
            elif kind == "evict":
                klib.read_sum(buf.data_ptr(), buf.numel(), a.threads)
                rc = 0
            else:
                rc = 0
            stamp["e"] = pc()
            return rc
        return call

    models = {}
    for prec, spec in SPECS.items():
        m = load_pretrained("smollm2-135m").model.eval()
        if spec:
            apply(m, parse_spec(spec), ApplyContext())
        if prepare_decode(m) is not None:
            raise SystemExit(f"{prec}: the fused decode does not run here: {prepare_decode(m)}")
        models[prec] = m
    clock = CpuShareClock()
    parts = ("pre", "call", "post", "argmax")
    kinds = ("real", "torch", "warm", "evict")
    res = {(p, k): {q: [] for q in parts} for p in SPECS for k in kinds}
    share = {key: [] for key in res}
    alt = {p: [] for p in SPECS}  # (call seconds with the pick, without it) of adjacent steps
    try:
        with torch.inference_mode():
            caches = {}
            for prec, m in models.items():
                caches[prec] = KVCache(max_len=a.steps + 8)
                decode.forward(m, torch.tensor([[1, 2, 3, 4]]), cache=caches[prec])
            for r in range(a.rounds):
                for prec, m in models.items():
                    for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                        klib.decode_layers = make(kind)
                        c = caches[prec]
                        c.length = 4
                        x = torch.tensor([[5]])
                        out = res[prec, kind]
                        clock.start()
                        with steady(m):
                            t2 = pc()
                            for _ in range(a.steps):
                                if kind == "torch":
                                    lo = decode.forward(m, x, cache=c)
                                    t1 = pc()
                                    x = lo[:, -1:].argmax(-1)
                                else:  # the pick inside the C call, written into x (warm, evict:
                                    # the same Python; their no-op call writes nothing, x stays)
                                    decode.forward(m, x, cache=c, greedy_into=x.view(-1))
                                    t1 = pc()
                                t3 = pc()
                                out["pre"].append(stamp["s"] - t2)
                                out["call"].append(stamp["e"] - stamp["s"])
                                out["post"].append(t1 - stamp["e"])
                                out["argmax"].append(t3 - t1)
                                t2 = t3
                        share[prec, kind].append(clock.stop())
                    # the pick's cost inside the call: pairs of adjacent steps, one with the pick and
                    # one without, which comes first swapped every round
                    klib.decode_layers = make("real")
                    c = caches[prec]
                    c.length = 4
                    x = torch.tensor([[5]])
                    with steady(m):
                        for i in range(a.steps - a.steps % 2):
                            pick = (i + r) % 2 == 1
                            decode.forward(m, x, cache=c, greedy_into=x.view(-1) if pick else None)
                            if m.last_decode_path != "fused":
                                raise SystemExit(f"{prec}: the fused decode declined a step")
                            t_call = stamp["e"] - stamp["s"]
                            if i % 2 == 0:
                                first = (pick, t_call)
                            else:
                                with_, without = (t_call, first[1]) if pick else (first[1], t_call)
                                alt[prec].append((with_, without))
                print(f"round {r + 1}/{a.rounds} done", flush=True)
    finally:
        klib.decode_layers = real
    print(f"\nmicroseconds per step, medians of {a.rounds} x {a.steps} steps ({a.threads} threads)")
    print(f"{'precision':9s} {'arm':6s} {'pre':>6s} {'call':>8s} {'post':>6s} {'argmax':>7s} {'outside':>8s} "
          f"{'outside/step':>13s} {'step':>8s} {'CPU share':>10s}")
    for (prec, kind), v in res.items():
        md = {q: statistics.median(v[q]) * 1e6 for q in parts}
        outside = md["pre"] + md["post"] + md["argmax"]
        step = statistics.median(sum(t) for t in zip(*(v[q] for q in parts))) * 1e6
        sh = share[prec, kind]
        print(f"{prec:9s} {kind:6s} {md['pre']:6.0f} {md['call']:8.0f} {md['post']:6.0f} {md['argmax']:7.0f} "
              f"{outside:8.0f} {outside / (outside + md['call']):13.1%} {step:8.0f} {min(sh):.2f}-{max(sh):.2f}")
    for prec, prs in alt.items():
        d = [w - wo for w, wo in prs]
        print(f"{prec}: the pick inside the call, call with / without it on adjacent steps: median paired "
              f"difference {statistics.median(d) * 1e6:+.1f} µs ({len(d)} pairs; medians "
              f"{statistics.median(w for w, _ in prs) * 1e6:.0f} / {statistics.median(wo for _, wo in prs) * 1e6:.0f} µs)")
    lo = torch.randn(1, 49152)
    ids = torch.empty(1, dtype=torch.int64)
    cold, warm = [], []
    for _ in range(30):
        lo.mul_(1.0)  # freshly written, as the output layer writes them
        klib.read_sum(buf.data_ptr(), buf.numel(), a.threads)  # then evicted, as a weight stream evicts them
        t = pc()
        klib.argmax_rows(lo.data_ptr(), 1, lo.shape[1], lo.shape[1], ids.data_ptr())
        cold.append(pc() - t)
        t = pc()
        klib.argmax_rows(lo.data_ptr(), 1, lo.shape[1], lo.shape[1], ids.data_ptr())
        warm.append(pc() - t)
    print(f"ml_argmax_rows over 49,152 logits (ctypes call included): after a 512 MiB read "
          f"{statistics.median(cold) * 1e6:.1f} µs, again at once {statistics.median(warm) * 1e6:.1f} µs")
    # the pick inside the call against torch's after it: the whole step, paired per round
    for prec in SPECS:
        per_round = [statistics.median(sum(t) for t in zip(*(res[prec, k][q][r * a.steps:(r + 1) * a.steps]
                                                          for q in parts))) for k in ("real", "torch")
                     for r in range(a.rounds)]
        ratios = [per_round[a.rounds + r] / per_round[r] for r in range(a.rounds)]
        print(f"{prec}: step time torch's argmax / pick inside the call, per round: "
              f"{' '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
