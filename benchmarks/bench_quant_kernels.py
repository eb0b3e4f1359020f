"""Quantized matmul kernels vs float32 nn.Linear, measured in the same run.

Part 1 (layers): the SmolLM2-135M layer shapes (576->576, 576->192, 576->1536, 1536->576,
576->49152) at M=1 (decode) and M=512 (prefill): median time of float32 nn.Linear and of each
quantized module (int8 weight-only, int4 g32/g64 weight-only, dynamic int8 per token and per
32-block, and torch's
deprecated fbgemm dynamic int8 for reference), the ratio fp32_time / kernel_time (> 1 = faster
than fp32) and the kernel each call used. Weights of one layer stay in cache here, which flatters
float32; part 2 is the real test.

Part 2 (whole model, when moorelab.model.zoo.load_pretrained("smollm2-135m") works): greedy
decode tokens/s over 64 new tokens for fp32, int8, int4-g32, int4-g64, int8-dynamic, int4 with
int16 / int8 activation blocks (a16, a8; g32 and g64), int4-g32 with an int8 lm_head, and fp32
on the per-op Python decode path ("fp32-py"; every other row uses the fused decode of
moorelab.model.fused_decode), variants interleaved round by round, median; and bits per byte on
the first --chars characters of Macbeth (moorelab.measure, window 512, every token once).

The machine is shared: every figure is a median of many repeats, variants are interleaved, and
part 1 is measured twice (start and end) and both passes are printed.

Usage: python benchmarks/bench_quant_kernels.py [--quick] [--threads 2] [--rounds 5]
       [--chars 20000] [--no-layers] [--no-model] [--no-bpb] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moorelab import kernels  # noqa: E402
from moorelab.improve.quantize import (  # noqa: E402
    Int4WeightOnlyConfig,
    Int8DynamicConfig,
    Int8WeightOnlyConfig,
    quantize_,
    weight_bytes,
)

SHAPES = [(576, 576), (576, 192), (576, 1536), (1536, 576), (576, 49152)]  # (in, out)


def median_time(fn, repeats: int, min_seconds: float = 0.0) -> float:
    """Median seconds per call over ``repeats`` calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - t_start) < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) > 50 * repeats:
            break
    return statistics.median(times)


def fbgemm_dynamic(linear: nn.Linear):
    """torch's (deprecated) fbgemm dynamic int8 Linear, per-channel weights, per-tensor activations."""
    try:
        import torch.ao.nn.quantized.dynamic as nnqd

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w = linear.weight.detach()
            scale = (w.abs().amax(1) / 127).clamp_min(1e-12).double()
            qw = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
            q = nnqd.Linear(linear.in_features, linear.out_features, dtype=torch.qint8)
            q.set_weight_bias(qw, linear.bias.detach() if linear.bias is not None else None)
        return q
    except Exception as exc:  # noqa: BLE001 - reference only
        print(f"  (fbgemm dynamic unavailable: {exc})")
        return None


def bench_layers(quick: bool) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    schemes = [
        ("int8", Int8WeightOnlyConfig()),
        ("int4-g32", Int4WeightOnlyConfig(group_size=32)),
        ("int4-g64", Int4WeightOnlyConfig(group_size=64)),
        ("int8-dyn", Int8DynamicConfig()),
        ("int8-b32", Int8DynamicConfig(activation_block=32)),
        ("int4-a16", Int4WeightOnlyConfig(group_size=32, activation_bits=16)),
        ("int4-a8", Int4WeightOnlyConfig(group_size=32, activation_bits=8)),
    ]
    for k, n in SHAPES:
        lin = nn.Linear(k, n, bias=False)
        for m in (1, 512):
            big = m * k * n > 5e7
            reps = (5 if big else 30) if quick else (15 if big else 200)
            x = torch.randn(m, k)
            with torch.inference_mode():
                t_fp32 = median_time(lambda: lin(x), reps, 0.0 if quick else 0.3)
                row = {"in": k, "out": n, "M": m, "fp32_ms": t_fp32 * 1e3, "kernels": {}}
                for label, cfg in schemes:
                    holder = nn.Sequential(nn.Linear(k, n, bias=False))
                    holder[0].weight.data.copy_(lin.weight.data)
                    quantize_(holder, cfg)
                    qmod = holder[0]
                    t = median_time(lambda: qmod(x), reps, 0.0 if quick else 0.3)
                    row["kernels"][label] = {"ms": t * 1e3, "ratio": t_fp32 / t, "kernel": qmod.last_kernel}
                fq = fbgemm_dynamic(lin)
                if fq is not None:
                    t = median_time(lambda: fq(x), reps, 0.0 if quick else 0.3)
                    row["kernels"]["fbgemm-dyn"] = {"ms": t * 1e3, "ratio": t_fp32 / t, "kernel": "fbgemm dynamic (torch.ao)"}
            rows.append(row)
    return rows


def print_layer_table(rows: list[dict], title: str) -> None:
    labels = list(rows[0]["kernels"])
    print(f"\n{title}")
    head = f"{'shape in->out':>14s} {'M':>4s} {'fp32 ms':>9s}" + "".join(f" {lab + ' ms':>12s} {'x':>5s}" for lab in labels)
    print(head)
    for r in rows:
        line = f"{str(r['in']) + '->' + str(r['out']):>14s} {r['M']:>4d} {r['fp32_ms']:9.3f}"
        for lab in labels:
            kk = r["kernels"].get(lab)
            line += f" {kk['ms']:12.3f} {kk['ratio']:5.2f}" if kk else f" {'-':>12s} {'-':>5s}"
        print(line)
    print("kernels used:")
    seen = set()
    for r in rows:
        for lab, kk in r["kernels"].items():
            key = (lab, r["M"] == 1, kk["kernel"])
            if key not in seen:
                seen.add(key)
                print(f"  {lab:9s} M={'1  ' if r['M'] == 1 else '512'}: {kk['kernel']}")


# --------------------------------------------------------------------------- whole model


@torch.inference_mode()
def greedy_decode_tps(model, prompt_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    """Greedy decode with the KV cache; returns (decode tokens/s excluding prefill, token ids)."""
    from moorelab.model import decode
    from moorelab.model.transformer import KVCache

    cache = KVCache(max_len=len(prompt_ids) + new_tokens)
    logits = decode.forward(model, torch.tensor([prompt_ids]), cache=cache)
    nxt = int(logits[0, -1].argmax())
    out = [nxt]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits = decode.forward(model, torch.tensor([[nxt]]), cache=cache)
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
    dt = time.perf_counter() - t0
    return (new_tokens - 1) / dt, out


def bench_model(quick: bool, rounds: int, chars: int | None) -> dict | None:
    """Whole-model decode speed (interleaved rounds, median) and bits per byte per variant."""
    import copy

    try:
        from moorelab.measure.quality import score_text
        from moorelab.measure.text import default_text, take_prefix
        from moorelab.model.zoo import load_pretrained

        loaded = load_pretrained("smollm2-135m")
    except Exception as exc:  # noqa: BLE001
        print(f"\n(whole-model part skipped: {type(exc).__name__}: {exc})")
        return None
    tok = loaded.tokenizer
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    prompt_ids = tok.encode(prompt).ids
    new_tokens = 16 if quick else 64
    text = take_prefix(default_text(), min(chars or 3000, 3000) if quick else (chars or 3000))
    text_ids = tok.encode(text.text, add_special_tokens=False).ids
    doc_id = getattr(loaded, "document_token_id", None)
    bos = loaded.eos_token_id if doc_id is None else doc_id
    variants = {
        "fp32": None,
        "int8": Int8WeightOnlyConfig(),
        "int4-g32": Int4WeightOnlyConfig(group_size=32),
        "int4-g64": Int4WeightOnlyConfig(group_size=64),
        "int8-dyn": Int8DynamicConfig(),
        "int8-b32": Int8DynamicConfig(activation_block=32),
        "int4-a16": Int4WeightOnlyConfig(group_size=32, activation_bits=16),
        "int4-a8": Int4WeightOnlyConfig(group_size=32, activation_bits=8),
        "i4g64-a8": Int4WeightOnlyConfig(group_size=64, activation_bits=8),
        "fp32-py": None,  # float32 on the per-op Python decode path (model.fused_decode = False)
    }
    variants["int4+8head"] = "mixed"  # int4-g32 blocks, int8 lm_head (the only lossy int4 layer here)
    models, reports, results = {}, {}, {}
    for label, cfg in variants.items():
        model = loaded.model if label == "fp32" else copy.deepcopy(loaded.model)
        model.fused_decode = label != "fp32-py"
        t0 = time.perf_counter()
        if cfg == "mixed":
            reports[label] = quantize_(model, Int4WeightOnlyConfig(group_size=32), filter_fn=lambda m, n: n != "lm_head")
            head = quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, n: n == "lm_head")
            reports[label].layers += head.layers
        else:
            reports[label] = quantize_(model, cfg) if cfg is not None else None
        models[label] = model
        results[label] = {"quantize_s": time.perf_counter() - t0, "weight_bytes": weight_bytes(model), "tps": []}
    for _ in range(rounds):  # interleaved, so every variant sees the same machine load
        for label, model in models.items():
            tps, ids = greedy_decode_tps(model, prompt_ids, new_tokens)
            results[label]["tps"].append(tps)
            results[label]["decode_path"] = model.last_decode_path
            results[label]["continuation"] = tok.decode(ids)[:48]
    for label, model in models.items():
        bpb, scored = float("nan"), 0
        if chars:
            with torch.inference_mode():
                q = score_text(lambda ids: model(ids), text_ids, text.n_bytes, window=512, bos_policy="first",
                               bos_token_id=bos, batch_size=1)
            bpb, scored = q.bits_per_byte, q.tokens_scored
        r, rep = results[label], reports[label]
        r.update(decode_tokens_per_s=statistics.median(r["tps"]), bits_per_byte=bpb, tokens_scored=scored,
                 min_sqnr_db=rep.min_sqnr_db if rep else None, mean_sqnr_db=rep.mean_sqnr_db if rep else None,
                 lm_head_sqnr_db=next((x.sqnr_db for x in rep.layers if x.name == "lm_head"), None) if rep else None,
                 kernel=(" + ".join(dict.fromkeys(x.kernel for x in rep.layers)) if rep else "moorelab fp32 GEMV")
                 + f"; decode path {r['decode_path']}")
    for label in ("int8", "int4-g32"):
        lines = reports[label].table().splitlines()
        print(f"\nper-layer report ({label}): block 0 and the lm_head")
        print("\n".join(lines[:9] + [ln for ln in lines if ln.startswith("lm_head")] + lines[-2:]))
    fp = results["fp32"]
    print(f"\nwhole model SmolLM2-135M, batch 1, {torch.get_num_threads()} threads: greedy decode of {new_tokens} new "
          f"tokens (median of {rounds} interleaved rounds); bits/byte on {text.description}, "
          f"{len(text.text)} chars, {fp['tokens_scored']} tokens, window 512")
    print(f"{'variant':9s} {'tok/s':>7s} {'x fp32':>7s} {'bits/byte':>10s} {'Δ bpb':>8s} {'weights MB':>10s} "
          f"{'min SQNR':>8s} {'mean SQNR':>9s}  continuation / kernel")
    for label, r in results.items():
        sq = "" if r["min_sqnr_db"] is None else f"{r['min_sqnr_db']:.1f}"
        msq = "" if r["mean_sqnr_db"] is None else f"{r['mean_sqnr_db']:.1f}"
        print(f"{label:9s} {r['decode_tokens_per_s']:7.2f} {r['decode_tokens_per_s'] / fp['decode_tokens_per_s']:7.2f} "
              f"{r['bits_per_byte']:10.4f} {r['bits_per_byte'] - fp['bits_per_byte']:+8.4f} "
              f"{r['weight_bytes'] / 1e6:10.1f} {sq:>8s} {msq:>9s}  {r['continuation']!r} / {r['kernel']}")
        print(f"{'':9s} all rounds tok/s: {', '.join(f'{t:.1f}' for t in r['tps'])}")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model part")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures as JSON")
    ap.add_argument("--no-layers", action="store_true", help="skip the per-layer part")
    ap.add_argument("--no-bpb", action="store_true", help="skip bits per byte (speed only)")
    ap.add_argument("--chars", type=int, default=20000, help="characters of Macbeth scored for bits per byte")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved whole-model decode rounds")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (kernels use the same)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, kernels: {kernels.status()}")
    first = second = None
    if not args.no_layers:
        first = bench_layers(args.quick)
        print_layer_table(first, "layers (ratio = fp32 time / kernel time; > 1 is faster), first pass")
    model_res = None
    if not args.no_model:
        model_res = bench_model(args.quick, 1 if args.quick else args.rounds, None if args.no_bpb else args.chars)
    if not args.no_layers:
        second = bench_layers(args.quick)
        print_layer_table(second, "layers, second pass (re-run at the end; machine is shared)")
    if args.json:
        args.json.write_text(json.dumps({"layers_first": first, "layers_second": second, "model": model_res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
