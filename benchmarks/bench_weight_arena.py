"""Fused decode with the weights packed in one block in reading order, against the same model's
weights where the loader and ``quantize_`` left them; interleaved in one process.

SmolLM2-135M, ``--threads`` threads, each precision (float32; 8-bit =
``int8-dynamic:activation_block=32``; 4-bit = ``int4:group_size=32,activation_bits=8``) loaded
twice: one copy packed by :func:`moorelab.model.fused_decode.prepare_decode`
(:mod:`moorelab.model.weight_arena`), one left as loaded and quantized. Every round decodes ``--tokens``
greedy tokens after a ``--prompt-len``-token prompt with each copy (order alternating between
rounds), timing each step (:func:`moorelab.measure.speed.measure_decode`) with the process CPU
share. Prints per precision the median tokens/s of each copy, packed / scattered with the
range over rounds, the CPU share (rounds below 0.9 are marked and left out of the median), the
bytes packed, and checks that both copies produced the same tokens.

Usage: python benchmarks/bench_weight_arena.py [--threads 2] [--rounds 7] [--tokens 64]
       [--prompt-len 32] [--precisions float32,8-bit,4-bit]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SPECS = {"float32": None, "8-bit": "int8-dynamic:activation_block=32", "4-bit": "int4:group_size=32,activation_bits=8"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--precisions", default="float32,8-bit,4-bit")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.measure.speed import CpuShareClock, measure_decode
    from moorelab.measure.text import default_text
    from moorelab.model import decode
    from moorelab.model.tokenize import encode_text
    from moorelab.model.fused_decode import prepare_decode
    from moorelab.model.transformer import KVCache
    from moorelab.model.zoo import load_pretrained

    precs = a.precisions.split(",")
    unknown = [x for x in precs if x not in SPECS]
    if unknown:
        raise SystemExit(f"--precisions: unknown {unknown}; choose from {list(SPECS)}")
    loaded = load_pretrained("smollm2-135m")
    prompt = torch.tensor([encode_text(loaded.tokenizer, default_text().text)[: a.prompt_len]])
    models = {}
    for prec in precs:
        for packed in (True, False):
            m = load_pretrained("smollm2-135m").model.eval()
            if SPECS[prec]:
                apply(m, parse_spec(SPECS[prec]), ApplyContext())
            if packed:
                prepare_decode(m)
            models[prec, packed] = m

    tokens: dict = {}

    def step(m):
        def run(ids, cache):
            out = decode.forward(m, ids, cache=cache)
            if ids.shape[1] == 1 and m.last_decode_path != "fused":
                raise SystemExit(f"decode ran the {m.last_decode_path} path, not the fused one")
            tokens.setdefault(id(m), []).append(int(out[0, -1].argmax()))
            return out
        return run

    rec: dict = {}
    clock = CpuShareClock()
    with torch.inference_mode():
        for rnd in range(-1, a.rounds):  # round -1: warm-up (and the packing), not recorded
            for prec in precs:
                for packed in ((True, False) if rnd % 2 == 0 else (False, True)):
                    m = models[prec, packed]
                    tokens.pop(id(m), None)
                    times = measure_decode(step(m), KVCache, prompt, a.tokens, clock=clock)
                    if rnd >= 0:
                        rec.setdefault((prec, packed), []).append((len(times) / sum(times), clock.last))
            if rnd >= 0:
                print(f"round {rnd + 1}/{a.rounds} done", flush=True)
    print(f"\nSmolLM2-135M fused decode, {a.threads} threads, {a.tokens} tokens after a {a.prompt_len}-token "
          f"prompt, {a.rounds} interleaved rounds (median tok/s of rounds with CPU share >= 0.9)")
    print(f"{'precision':9} {'packed':>8} {'scattered':>9} {'ratio':>6} {'range':>13} {'share':>10} {'kept':>5}  packed MB")
    for prec in precs:
        both = list(zip(rec[prec, True], rec[prec, False]))
        kept = [(x, y) for x, y in both if min(x[1], y[1]) >= 0.9]
        use = kept or both
        ratios = [x[0] / y[0] for x, y in use]
        shares = [s for x, y in both for s in (x[1], y[1])]
        m = models[prec, True]
        from moorelab.model.fused_decode import _build

        plan = _build(m)
        base = plan.stream[0].data_ptr()
        end = max(t.data_ptr() + t.numel() * t.element_size() for t in plan.stream)
        same = tokens[id(models[prec, True])] == tokens[id(models[prec, False])]
        print(f"{prec:9} {statistics.median(x[0] for x, _ in use):8.1f} {statistics.median(y[0] for _, y in use):9.1f} "
              f"{statistics.median(ratios):6.3f} {min(ratios):6.3f}-{max(ratios):6.3f} "
              f"{min(shares):4.2f}-{max(shares):4.2f} {len(kept):2d}/{len(both)}  {(end - base) / 1e6:7.1f}"
              f"{'' if kept else '  * no round undisturbed: all shown'}{'' if same else '  ! tokens differ'}")


if __name__ == "__main__":
    main()
