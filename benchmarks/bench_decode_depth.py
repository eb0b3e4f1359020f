"""Decode at depth 0 and 4,096 and prefill, against the read bandwidth measured in the same run (issue 15).

SmolLM2-135M, batch 1, ``--threads`` threads, one process. Rows: float32, int8 weight-only and
int4 g32 with int8 activation blocks (the three precisions of ``moorelab run``), each with a
float32 and a float16 KV cache (``KVCache(dtype=torch.float16)``), at depth 0 and ``--depth``:

* decode tok/s: 1 / median step time of ``--steps`` greedy steps after ``depth`` cached tokens
  (the fused decode, its weights packed by ``prepare_decode`` as ``moorelab run`` and
  ``moorelab generate`` pack them; since 2026-12-02 19:00 UTC, commit 8587569: before it the
  rows ran on unpacked weights and the prefills without ``prepare_decode``'s held heap, so
  figures from before and after are not comparable), rounds interleaved over every row so all
  see the same machine load;
* bytes read per token: every linear layer's stored weights (the embedding row is negligible)
  plus the cached keys and values of every layer at that depth;
* limit tok/s = read bandwidth / bytes per token, the bandwidth being the faster of ``torch.sum``
  and ``ml_read_sum`` over a 512 MB buffer on huge pages where the host allows them, as the
  packed weights (:mod:`moorelab.measure.bandwidth`) measured at the
  start and end of the run (the higher kept); "% of limit";
* CPU share: process CPU seconds / (wall seconds x threads) over each row's timed steps: below 1
  the machine was shared (other processes had the cores), and every figure is low by about it;
* prefill tok/s of ``--prefill`` tokens (no cache), per precision, with the logits of every
  position (as ``moorelab run`` times it) and of the last one only (as generation, and
  llama.cpp's ``llama-bench``, do); for int8 and int4-a8 also the previous prefill (dequantize
  + float32 matmul) as an A/B of the integer GEMMs (``ml_w8_gemm``, ``ml_w4a8_gemm``);
* CPU figures (process CPU time of all threads): on a shared machine the wall figures carry the
  other processes' load, CPU time far less of it;
* bits per byte of the float16 cache against the float32 one: the default text scored in
  512-token windows, each run through a fresh cache of that type (``--chars`` characters); and
  of int8 with its integer prefill GEMM (x rows rounded to int16) and of int4-a8 with its integer
  GEMM (the decode kernel's numbers) against the previous dequantize + float32 matmul.

Usage: python benchmarks/bench_decode_depth.py [--threads 2] [--depth 4096] [--steps 32] [--rounds 3]
       [--prefill 512] [--chars 20000] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moorelab.improve.api import apply, parse_spec  # noqa: E402
from moorelab.improve.quantize import Int8WeightOnlyLinear, QuantizedLinear  # noqa: E402
from moorelab.improve.quantize.int4 import Int4WeightOnlyLinear  # noqa: E402
from moorelab.model import decode  # noqa: E402
from moorelab.model.transformer import KVCache  # noqa: E402

PRECISIONS = {"fp32": None, "int8": "int8", "int4-a8": "int4:group_size=32,activation_bits=8"}


def read_bandwidth(n_bytes: int = 512 << 20, repeats: int = 7) -> tuple[float, float, float | None]:
    """Read bandwidth over an ``n_bytes`` float32 buffer, the faster of ``torch.sum`` and
    ``ml_read_sum``, best of ``repeats`` passes each (:func:`moorelab.measure.bandwidth.read_bandwidth`):
    (GB per wall second, GB per CPU second of all threads, the buffer's share on huge pages or None)."""
    from moorelab.measure.bandwidth import read_bandwidth as measure

    r = measure(n_bytes=n_bytes, reps=repeats)
    return r["gb_per_s"], r["gb_per_cpu_s"], r["huge_page_fraction"]


def linear_bytes(model: nn.Module) -> int:
    """Bytes a decode step reads from the weights: every linear layer's stored tensors."""
    seen, total = set(), 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, QuantizedLinear)):
            for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


def kv_bytes(model, depth: int, dtype: torch.dtype) -> int:
    """Bytes of cached keys and values a step at ``depth`` reads (every layer, K and V)."""
    esz = torch.tensor([], dtype=dtype).element_size()
    return sum(2 * b.attn.n_kv_heads * b.attn.head_dim * (depth + 1) * esz for b in model.blocks)


class Row:
    def __init__(self, label, model, kv_dtype, depth, ids, steps):
        self.label, self.model, self.kv_dtype, self.depth, self.steps = label, model, kv_dtype, depth, steps
        self.cache = KVCache(max_len=depth + steps + 2, dtype=kv_dtype)
        with torch.inference_mode():
            if depth:
                model(ids[:, :depth], cache=self.cache)
        self.first = ids[:, depth : depth + 1]
        self.step_s: list[float] = []
        self.step_cpu: list[float] = []
        self.cpu = self.wall = 0.0

    def run(self, threads: int) -> None:
        self.cache.length = self.depth  # the same positions again: the prefix stays cached
        # [1, 1]: each step's greedy pick is written into it, inside the fused call (greedy_into), so
        # since 2026-12-03 a step's time includes the pick (8-28 µs) that earlier runs left outside
        nxt = self.first.clone()
        c0, w0 = time.process_time(), time.perf_counter()
        with torch.inference_mode():
            for _ in range(self.steps):
                t, c = time.perf_counter(), time.process_time()
                decode.forward(self.model, nxt, cache=self.cache, greedy_into=nxt.view(-1))
                self.step_s.append(time.perf_counter() - t)
                self.step_cpu.append(time.process_time() - c)
        self.cpu += time.process_time() - c0
        self.wall += (time.perf_counter() - w0) * threads
        assert self.model.last_decode_path == "fused"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depth", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--chars", type=int, default=20000, help="characters of the default text for bits per byte (0: skip)")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from moorelab import kernels

    if kernels.get_library() is None:  # every decode row runs the fused decode, a compiled kernel
        raise SystemExit(f"bench_decode_depth.py needs the compiled kernels (the fused decode): {kernels.status()}")
    from moorelab.measure.quality import score_text
    from moorelab.measure.text import default_text, take_prefix
    from moorelab.measure.bandwidth import huge_page_fraction, thp_setting
    from moorelab.model.fused_decode import decode_weights, prepare_decode
    from moorelab.model.zoo import load_pretrained

    bw0, bwc0, _ = read_bandwidth()
    loaded = load_pretrained("smollm2-135m")
    tok = loaded.tokenizer
    text = take_prefix(default_text(), max(args.chars, 40000))
    ids_all = tok.encode(text.text, add_special_tokens=False).ids
    need = max(args.depth + args.steps + 2, args.prefill)
    ids = torch.tensor([(ids_all * (need // len(ids_all) + 1))[:need]])
    models = {}
    unknown = [p for p in args.precisions.split(",") if p not in PRECISIONS]
    if unknown:
        ap.error(f"--precisions: unknown {', '.join(unknown)} (known: {', '.join(PRECISIONS)})")
    for label in args.precisions.split(","):
        m = copy.deepcopy(loaded.model)
        if PRECISIONS[label]:
            apply(m, parse_spec(PRECISIONS[label]))
        # the decode weights packed in reading order on huge pages, as moorelab run and generate do
        prepare_decode(m)
        models[label] = m.eval()
    # decode_weights is [] when the fused decode does not run a model (kernels not built): nothing to count
    huge = {label: (huge_page_fraction(ws) if (ws := decode_weights(m)) else None) for label, m in models.items()}
    rows = [Row(f"{label} kv-{'f16' if kv is torch.float16 else 'f32'} d{d}", m, kv, d, ids, args.steps)
            for label, m in models.items() for kv in (torch.float32, torch.float16) for d in (0, args.depth)]
    # prefill: each precision, and int8 / int4-a8 on their previous path (dequantize + float32 matmul)
    pre = {label: m for label, m in models.items()}
    if "int8" in models:
        old = copy.deepcopy(models["int8"])
        for mod in old.modules():
            if isinstance(mod, Int8WeightOnlyLinear):
                mod._prefill_forward = lambda x2, mod=mod: mod._dequant_chunks(x2, mod._dequant_rows)
        pre["int8 (dequant+fp32 prefill)"] = old
    if "int4-a8" in models:
        old = copy.deepcopy(models["int4-a8"])
        for mod in old.modules():
            if isinstance(mod, Int4WeightOnlyLinear):
                mod._prefill_forward = mod._dequant_prefill
        pre["int4-a8 (dequant+fp32 prefill)"] = old
    pre = {**{f"{k} (last logits only)": m for k, m in models.items()}, **pre}
    pre_s: dict[str, list[float]] = {k: [] for k in pre}
    pre_cpu = {k: 0.0 for k in pre}
    pre_wall = {k: 0.0 for k in pre}
    prompt = ids[:, : args.prefill]
    for _ in range(args.rounds):
        for r in rows:
            r.run(args.threads)
        with torch.inference_mode():
            for k, m in pre.items():
                c, t = time.process_time(), time.perf_counter()
                m(prompt, last_only="last logits" in k)
                dt = time.perf_counter() - t
                pre_s[k].append(dt)
                pre_cpu[k] += time.process_time() - c
                pre_wall[k] += dt * args.threads
    bw1, bwc1, huge_end = read_bandwidth()
    huge = {"reference": huge_end, **huge}
    bw, bwc = max(bw0, bw1), max(bwc0, bwc1)
    out = {"threads": args.threads, "read_bandwidth_gb_s": [bw0, bw1], "read_gb_per_cpu_s": [bwc0, bwc1],
           "decode": [], "prefill": [], "quality": [], "huge_pages": huge, "thp_setting": thp_setting()}
    print(f"SmolLM2-135M, {args.threads} threads; read bandwidth (torch.sum or ml_read_sum, 512 MB) {bw0:.1f} / end of run "
          f"{bw1:.1f} GB/s (limit figures use {bw:.1f}); per CPU second of all threads {bwc0:.1f} / {bwc1:.1f} "
          f"(CPU limits use {bwc:.1f})")
    print(f"on transparent huge pages (share of the bytes; host setting {thp_setting()}): "
          + ", ".join(f"{k} {'?' if v is None else f'{v:.0%}'}" for k, v in huge.items()))
    print(f"decode: median step of {args.steps} steps x {args.rounds} interleaved rounds; 'CPU ms' = median process "
          f"CPU time per step (all threads), 'CPU % limit' = bytes per CPU second against the read's")
    print(f"{'row':22s} {'tok/s':>7s} {'MB/token':>8s} {'limit':>7s} {'% limit':>7s} {'CPU ms':>7s} {'CPU % limit':>11s} "
          f"{'CPU share':>9s}")
    for r in rows:
        tps = 1.0 / statistics.median(r.step_s)
        cpu_ms = 1e3 * statistics.median(r.step_cpu)
        nbytes = linear_bytes(r.model) + kv_bytes(r.model, r.depth, r.kv_dtype)
        limit = bw * 1e9 / nbytes
        cpu_frac = (nbytes / (cpu_ms / 1e3)) / (bwc * 1e9)
        share = r.cpu / r.wall if r.wall else float("nan")
        print(f"{r.label:22s} {tps:7.1f} {nbytes / 1e6:8.1f} {limit:7.1f} {100 * tps / limit:6.1f}% {cpu_ms:7.2f} "
              f"{100 * cpu_frac:10.1f}% {share:9.2f}")
        out["decode"].append({"row": r.label, "tokens_per_s": tps, "bytes_per_token": nbytes, "limit_tokens_per_s": limit,
                              "fraction_of_limit": tps / limit, "cpu_ms_per_token": cpu_ms,
                              "cpu_fraction_of_limit": cpu_frac, "cpu_share": share})
    print(f"\nprefill of {args.prefill} tokens (median of {args.rounds} rounds; logits of every position unless "
          f"said; CPU tok/s = tokens per CPU second of all threads)")
    for k in pre:
        tps = args.prefill / statistics.median(pre_s[k])
        share = pre_cpu[k] / pre_wall[k]
        cpu_tps = args.prefill * args.rounds / pre_cpu[k]
        print(f"{k:40s} {tps:7.1f} tok/s  CPU {cpu_tps:7.1f} tok/s  CPU share {share:.2f}")
        out["prefill"].append({"row": k, "tokens_per_s": tps, "cpu_tokens_per_s": cpu_tps, "cpu_share": share})
    if args.chars:
        qtext = take_prefix(default_text(), args.chars)
        qids = tok.encode(qtext.text, add_special_tokens=False).ids
        doc_id = getattr(loaded, "document_token_id", None)
        bos = loaded.eos_token_id if doc_id is None else doc_id
        print(f"\nbits per byte, {qtext.description}, {len(qtext.text)} chars, window 512, each window through a "
              f"fresh KV cache of the type named")
        for label, m in models.items():
            res = {}
            for kv in (torch.float32, torch.float16):
                with torch.inference_mode():
                    q = score_text(lambda x, m=m, kv=kv: m(x, cache=KVCache(dtype=kv)), qids, qtext.n_bytes,
                                   window=512, bos_policy="first", bos_token_id=bos, batch_size=1)
                res[str(kv).replace("torch.", "")] = q.bits_per_byte
            d = res["float16"] - res["float32"]
            print(f"{label:8s} kv float32 {res['float32']:.5f}  kv float16 {res['float16']:.5f}  delta {d:+.5f}")
            out["quality"].append({"precision": label, **res, "delta_bits_per_byte": d})
        for label, what in (("int8", "x rows in int16"), ("int4-a8", "the decode kernel's sums")):
            key = f"{label} (dequant+fp32 prefill)"
            if key not in pre:  # what the integer prefill GEMM costs (or saves) in bits per byte
                continue
            with torch.inference_mode():
                q = score_text(lambda x, key=key: pre[key](x), qids, qtext.n_bytes, window=512,
                               bos_policy="first", bos_token_id=bos, batch_size=1)
            new = next(r["float32"] for r in out["quality"] if r["precision"] == label)
            print(f"{label} prefill GEMM ({what}) {new:.5f} vs dequantize + float32 matmul {q.bits_per_byte:.5f}: "
                  f"delta {new - q.bits_per_byte:+.5f}")
            out[f"{label.replace('-', '_')}_gemm_delta_bits_per_byte"] = new - q.bits_per_byte
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
