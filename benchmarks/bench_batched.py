"""Batched decode: the fused call (``ml_decode_batch``) against the per-op Python path, interleaved.

SmolLM2-135M, ``--threads`` threads. For each precision (float32; 8-bit =
``int8-dynamic:activation_block=32``; 4-bit = ``int4:group_size=32,activation_bits=8``) and each
batch size, ragged prompts cut from the default text (``--prompt-len`` .. ``--prompt-len`` +
16 tokens, left-padded) are decoded ``--tokens`` steps by both paths
(:func:`moorelab.measure.batched.measure_batched_decode`, one measurement per path and round;
``model.fused_decode`` switches the path), in every round precisions and paths alternating, so
both see the same machine. Prints per row the median tokens/s of all rows together, the CPU
share (below 0.9: disturbed, marked), and fused / Python.

Usage: python benchmarks/bench_batched.py [--threads 2] [--rounds 3] [--batch-sizes 1,2,4,8,16]
       [--tokens 16] [--prompt-len 32] [--precisions float32,8-bit,4-bit] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SPECS = {"float32": None, "8-bit": "int8-dynamic:activation_block=32", "4-bit": "int4:group_size=32,activation_bits=8"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-sizes", default="1,2,4,8,16")
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--precisions", default="float32,8-bit,4-bit")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.measure.batched import measure_batched_decode
    from moorelab.measure.text import default_text
    from moorelab.model.tokenize import encode_text
    from moorelab.model.zoo import load_pretrained

    sizes = [int(b) for b in a.batch_sizes.split(",")]
    precs = a.precisions.split(",")
    unknown = [x for x in precs if x not in SPECS]
    if unknown:
        raise SystemExit(f"--precisions: unknown {unknown}; choose from {list(SPECS)}")
    loaded = load_pretrained("smollm2-135m")
    ids = encode_text(loaded.tokenizer, default_text().text)
    models = {}
    for prec in precs:
        m = load_pretrained("smollm2-135m").model
        if SPECS[prec]:
            apply(m, parse_spec(SPECS[prec]), ApplyContext())
        models[prec] = m
    rec: dict = {}
    for rnd in range(a.rounds):
        for prec in precs[rnd % len(precs):] + precs[:rnd % len(precs)]:
            for path in (("fused", "python") if rnd % 2 == 0 else ("python", "fused")):
                m = models[prec]
                m.fused_decode = path == "fused"
                for row in measure_batched_decode(m, ids, sizes, new_tokens=a.tokens, prompt_len=a.prompt_len,
                                                  spread=16, rounds=1):
                    if row["path"] != path:
                        raise SystemExit(f"{prec} batch {row['batch']}: ran the {row['path']} path, not {path}")
                    rec.setdefault((prec, row["batch"], path), []).append(
                        (row["decode_tokens_per_s"]["value"], row["cpu_share"]))
        print(f"round {rnd + 1}/{a.rounds} done", flush=True)
    print(f"\nSmolLM2-135M batched decode, {a.threads} threads, {a.tokens} steps, prompts of "
          f"{a.prompt_len}-{a.prompt_len + 16} tokens, {a.rounds} rounds (tok/s of all rows; median; "
          f"* = a round below CPU share 0.9)")
    print(f"{'precision':9} {'batch':>5} {'fused tok/s':>11} {'python tok/s':>12} {'fused/python':>12} {'share':>6}")
    out = []
    for prec in precs:
        for b in sizes:
            f, py = rec[prec, b, "fused"], rec[prec, b, "python"]
            fm, pm = statistics.median(x[0] for x in f), statistics.median(x[0] for x in py)
            share = min(x[1] for x in f + py)
            flag = "*" if share < 0.9 else ""
            print(f"{prec:9} {b:5d} {fm:11.1f} {pm:12.1f} {fm / pm:12.2f} {share:5.2f}{flag}")
            out.append({"precision": prec, "batch": b, "fused_tokens_per_s": fm, "python_tokens_per_s": pm,
                        "fused_over_python": fm / pm, "min_cpu_share": share,
                        "rounds": {"fused": f, "python": py}})
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
