"""Causal attention of a prompt: our compiled kernel against torch's fused attention, interleaved.

Two parts, both in one process, the two sides alternating within each round:

1. **The attention alone** on SmolLM2-135M's heads (9 query heads on 3 key/value heads, d_k = 64)
   at ``--lengths`` prompt lengths: :func:`moorelab.model.transformer.causal_attention_kernel`
   against ``torch.nn.functional.scaled_dot_product_attention(is_causal=True, enable_gqa=True)``
   (the CPU flash attention), both from the projections' ``[B, T, H, d_k]`` layout to o_proj's
   (torch's output transposed and reshaped, as the model does). Each round times ``--calls``
   calls of each (best of them); prints the median ms, GFLOP/s (causal FLOP: ``4 · H · d_k ·
   T(T+1)/2``), ours / torch and the largest difference between the two outputs.
2. **The whole prefill** (``--prefill`` tokens of *Macbeth*, logits of the last position, as
   llama-bench's prefill) of SmolLM2-135M at each precision (float32; 8-bit =
   ``int8-dynamic:activation_block=32``; 4-bit = ``int4:group_size=32,activation_bits=8``),
   ``Attention.causal_kernel`` on and off on the same model: tokens/s, the ratio with its range
   over rounds, the largest logit difference and argmax agreement over every position, and the
   quality of both (mean negative log-likelihood of the prompt's next tokens, nats). The 8-bit and
   4-bit models round their activations to int8 in every layer, so a 1e-6 difference in the
   attention flips some roundings and moves the logits by up to ~3 (1e-6 of random noise added
   to torch's own attention output does the same); the likelihood shows whether quality moved.

Every timing carries the CPU share of its interval (:class:`moorelab.measure.speed.CpuShareClock`);
rounds below 0.9 on either side are left out of the medians (all are shown when none is kept).

Usage: python benchmarks/bench_attention.py [--threads 2] [--rounds 7] [--lengths 128,512,2048]
       [--calls 5] [--prefill 512] [--precisions float32,8-bit,4-bit] [--no-model]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SPECS = {"float32": None, "8-bit": "int8-dynamic:activation_block=32", "4-bit": "int4:group_size=32,activation_bits=8"}


def _kept(pairs):
    """rounds whose both sides ran at CPU share >= 0.9 (all rounds when none did), and whether any was"""
    kept = [(x, y) for x, y in pairs if min(x[1], y[1]) >= 0.9]
    return (kept, True) if kept else (pairs, False)


def attention_part(a, clock) -> None:
    from moorelab.model.transformer import causal_attention_kernel

    H, H_kv, d = 9, 3, 64
    print(f"\n1. causal attention alone, {H} query heads on {H_kv} kv heads, d_k {d}, {a.threads} threads, "
          f"{a.rounds} rounds of {a.calls} calls (best call of each round)")
    print(f"{'T':>5} {'ours ms':>8} {'torch ms':>8} {'ours GF/s':>9} {'torch GF/s':>10} {'ours/torch':>10} "
          f"{'range':>11} {'share':>9} {'kept':>5} {'max |diff|':>10}")
    for T in a.lengths:
        g = torch.Generator().manual_seed(T)
        q = torch.randn(1, T, H, d, generator=g).transpose(1, 2)
        k = torch.randn(1, T, H_kv, d, generator=g).transpose(1, 2)
        v = torch.randn(1, T, H_kv, d, generator=g).transpose(1, 2)
        ours = lambda: causal_attention_kernel(q, k, v)  # noqa: E731
        theirs = lambda: F.scaled_dot_product_attention(  # noqa: E731
            q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(1, T, H * d)
        with torch.inference_mode():
            o = ours()
            if o is None:
                raise SystemExit("the compiled kernels are unavailable: nothing to compare")
            diff = (o.view(1, T, H * d) - theirs()).abs().max().item()
            rec = {"ours": [], "torch": []}
            for rnd in range(a.rounds):
                for side in (("ours", "torch") if rnd % 2 == 0 else ("torch", "ours")):
                    f = ours if side == "ours" else theirs
                    f()
                    clock.start()
                    best = min(_time(f) for _ in range(a.calls))
                    rec[side].append((best, clock.stop()))
        pairs, any_kept = _kept(list(zip(rec["ours"], rec["torch"])))
        flop = 4 * H * d * T * (T + 1) / 2
        mo, mt = statistics.median(x[0] for x, _ in pairs), statistics.median(y[0] for _, y in pairs)
        ratios = [y[0] / x[0] for x, y in pairs]
        shares = [s for x, y in zip(rec["ours"], rec["torch"]) for s in (x[1], y[1])]
        print(f"{T:5d} {mo * 1e3:8.2f} {mt * 1e3:8.2f} {flop / mo / 1e9:9.0f} {flop / mt / 1e9:10.0f} "
              f"{statistics.median(ratios):10.2f} {min(ratios):5.2f}-{max(ratios):5.2f} "
              f"{min(shares):4.2f}-{max(shares):4.2f} {len(pairs) if any_kept else 0:2d}/{a.rounds} {diff:10.1e}"
              f"{'' if any_kept else '  * no round undisturbed: all shown'}")


def _time(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def model_part(a, clock) -> None:
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.measure.text import default_text
    from moorelab.model.fused_decode import prepare_decode
    from moorelab.model.tokenize import encode_text
    from moorelab.model.transformer import Attention
    from moorelab.model.zoo import load_pretrained

    loaded = load_pretrained("smollm2-135m")
    prompt = torch.tensor([encode_text(loaded.tokenizer, default_text().text)[: a.prefill]])
    P = prompt.shape[1]
    print(f"\n2. SmolLM2-135M prefill of {P} tokens (last position's logits), {a.threads} threads, {a.rounds} "
          f"rounds, Attention.causal_kernel on / off on the same model (best of 2 passes per side and round)")
    print(f"{'precision':9} {'on tok/s':>8} {'off tok/s':>9} {'on/off':>7} {'range':>11} {'share':>9} {'kept':>5} "
          f"{'max |logit diff|':>16} {'argmax':>6} {'nll on':>7} {'nll off':>7}")
    try:
        for prec in a.precisions:
            m = load_pretrained("smollm2-135m").model.eval()
            if SPECS[prec]:
                apply(m, parse_spec(SPECS[prec]), ApplyContext())
            prepare_decode(m)  # the benchmark's and generate's setting (packed weights, held heap)
            with torch.inference_mode():
                Attention.causal_kernel = True
                on = m(prompt)
                Attention.causal_kernel = False
                off = m(prompt)
                diff = (on - off).abs().max().item()
                agree = (on.argmax(-1) == off.argmax(-1)).float().mean().item()
                nll = [F.cross_entropy(x[0, :-1], prompt[0, 1:]).item() for x in (on, off)]
                rec = {True: [], False: []}
                for rnd in range(a.rounds):
                    for flag in ((True, False) if rnd % 2 == 0 else (False, True)):
                        Attention.causal_kernel = flag
                        m(prompt, last_only=True)
                        clock.start()
                        best = min(_time(lambda: m(prompt, last_only=True)) for _ in range(2))
                        rec[flag].append((P / best, clock.stop()))
            pairs, any_kept = _kept(list(zip(rec[True], rec[False])))
            ratios = [x[0] / y[0] for x, y in pairs]
            shares = [s for x, y in zip(rec[True], rec[False]) for s in (x[1], y[1])]
            print(f"{prec:9} {statistics.median(x[0] for x, _ in pairs):8.0f} "
                  f"{statistics.median(y[0] for _, y in pairs):9.0f} {statistics.median(ratios):7.3f} "
                  f"{min(ratios):5.3f}-{max(ratios):5.3f} {min(shares):4.2f}-{max(shares):4.2f} "
                  f"{len(pairs) if any_kept else 0:2d}/{a.rounds} {diff:16.1e} {agree:6.1%} {nll[0]:7.4f} {nll[1]:7.4f}"
                  f"{'' if any_kept else '  * no round undisturbed: all shown'}")
    finally:
        Attention.causal_kernel = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--lengths", default="128,512,2048")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--prefill", type=int, default=512)
    p.add_argument("--precisions", default="float32,8-bit,4-bit")
    p.add_argument("--no-model", action="store_true", help="part 1 only")
    a = p.parse_args()
    a.lengths = [int(x) for x in a.lengths.split(",")]
    a.precisions = a.precisions.split(",")
    unknown = [x for x in a.precisions if x not in SPECS]
    if unknown:
        raise SystemExit(f"--precisions: unknown {unknown}; choose from {list(SPECS)}")
    torch.set_num_threads(a.threads)
    from moorelab.measure.speed import CpuShareClock

    clock = CpuShareClock()
    attention_part(a, clock)
    if not a.no_model:
        model_part(a, clock)


if __name__ == "__main__":
    main()
