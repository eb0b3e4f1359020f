"""Pruning and distillation of SmolLM2-135M on real text, every figure measured.

Rows: baseline, magnitude 50% (global), Wanda 50%, heads pruned (one of three KV groups per
layer = a third of the heads), FFN channels pruned (25%), and the FFN-pruned model after
knowledge distillation from the unpruned model. For each: Δ bits per byte against the
baseline (Macbeth, strided, as ``moorelab run``), prefill/decode tokens/s
(``moorelab.measure.speed.measure_speed``, same protocol as ``moorelab run``), weight bytes
(``moorelab.measure.resources.weight_bytes``: bytes of the tensors the model holds) and
parameters. Unstructured rows are measured as stored (dense float32 with zeros, masks baked
in): sparsity alone neither shrinks nor speeds a dense matmul, and the table shows it.

Texts: evaluation on Macbeth (``tragedies/macbeth.md``, the project default); calibration
(Wanda, activation importance) and distillation on a different play, Henry V
(``histories/henry-v.md``).

Usage::

    python benchmarks/bench_pruning.py            # 24 min on one shared core (distillation 14 min)
    python benchmarks/bench_pruning.py --max-chars 3000 --window 256 --stride 128 --distill-steps 40 --seq-len 128

Threads: one by default. On the shared 2-core machine this was written on, two OpenMP threads
ran a 128-token SmolLM2 forward in 2.4-12 s against 0.6 s for one thread (a descheduled
thread stalls the other at every barrier), so one thread gives both faster and steadier
figures there.

Writes the table and a JSON file under ``moorelab.paths.cache_dir()/bench/``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import time
from pathlib import Path

import torch

from moorelab.improve.distill import FLOP_FORMULA, DistillConfig, distill
from moorelab.improve.prune import (
    FFNChannelPruneConfig,
    HeadPruneConfig,
    MagnitudePruneConfig,
    WandaConfig,
    prune_,
    remove_masks_,
)
from moorelab.measure import resources
from moorelab.measure.quality import score_text
from moorelab.measure.speed import measure_speed
from moorelab.measure.text import default_text, take_prefix
from moorelab.model import decode
from moorelab.model.transformer import KVCache
from moorelab.model.zoo import load_pretrained
from moorelab.paths import cache_dir
from moorelab.train import TokenWindows, calibration_batches, tokenize_text

EVAL_PLAY = "tragedies/macbeth.md"
TRAIN_PLAY = "histories/henry-v.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-chars", type=int, default=20000, help="characters of Macbeth scored")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--calibration-tokens", type=int, default=2048)
    ap.add_argument("--ffn-fraction", type=float, default=0.25)
    ap.add_argument("--distill-steps", type=int, default=150)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    ap.add_argument("--speed-rounds", type=int, default=5, help="round-robin speed rounds")
    ap.add_argument("--out", default=None, help="JSON output path (default: <cache>/bench/pruning.json)")
    ap.add_argument("--skip", default="", help="comma list of rows to skip: magnitude,wanda,heads,ffn,distill")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))

    lm = load_pretrained("smollm2-135m")
    base = lm.model.eval()
    text = take_prefix(default_text(EVAL_PLAY), args.max_chars)
    eval_ids = tokenize_text(lm.tokenizer, text.text)
    train_ids = tokenize_text(lm.tokenizer, default_text(TRAIN_PLAY).text)
    calib = calibration_batches(train_ids, 256, args.calibration_tokens)
    log(f"eval: {text.description}, {len(eval_ids)} tokens, {text.n_bytes} bytes; train/calibration: {TRAIN_PLAY}, {len(train_ids)} tokens")

    def bpb(model) -> float:
        with torch.inference_mode():
            q = score_text(
                lambda ids: model(ids), eval_ids, text.n_bytes, window=args.window, stride=args.stride,
                bos_policy="first", bos_token_id=lm.bos_token_id, batch_size=2,
            )
        return q.bits_per_byte

    prompt = torch.tensor([eval_ids[: max(args.prefill_tokens, 64)]], dtype=torch.long)

    variants: list[tuple[str, torch.nn.Module, str]] = []
    details: dict = {}
    rows: list[dict] = []
    out = Path(args.out) if args.out else cache_dir() / "bench" / "pruning.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def add(name: str, model: torch.nn.Module, notes: str) -> None:
        """Score bits per byte at once (logged, saved), speed later in the round-robin."""
        gc.collect()
        model.eval()
        t0 = time.perf_counter()
        rows.append({
            "name": name,
            "bits_per_byte": bpb(model),
            "weight_bytes": resources.weight_bytes(model),
            "parameters": resources.count_parameters(model),
            "nonzero_block_weights": int(sum(int((mm.weight != 0).sum()) for mm in model.blocks.modules() if isinstance(mm, torch.nn.Linear))),
            "notes": notes,
            "speed_rounds": [],
        })
        variants.append((name, model, notes))
        log(f"{name}: bpb {rows[-1]['bits_per_byte']:.4f} ({time.perf_counter() - t0:.0f} s)")
        out.write_text(json.dumps({"args": vars(args), "rows": rows, "details": details, "partial": True}, indent=1, default=str))

    add("baseline", base, "SmolLM2-135M float32")

    if "magnitude" not in skip:
        m = copy.deepcopy(base)
        r = prune_(m, MagnitudePruneConfig(0.5, scope="global"))
        details["magnitude"] = {k: v for k, v in r.to_dict().items() if k != "layers"}
        log(f"magnitude: {r.zeroed}/{r.total} zeroed in {r.seconds:.0f} s")
        remove_masks_(m)
        add("magnitude 50% (global)", m, f"{r.zeroed}/{r.total} block Linear weights zeroed; dense storage")
    if "wanda" not in skip:
        m = copy.deepcopy(base)
        r = prune_(m, WandaConfig(0.5, calibration_tokens=args.calibration_tokens), calib)
        details["wanda"] = {k: v for k, v in r.to_dict().items() if k != "layers"}
        log(f"wanda: {r.zeroed}/{r.total} zeroed in {r.seconds:.0f} s on {r.calibration_tokens} calibration tokens")
        remove_masks_(m)
        add("Wanda 50%", m, f"{r.zeroed}/{r.total} zeroed, per output row; dense storage")
    if "heads" not in skip:
        m = copy.deepcopy(base)
        r = prune_(m, HeadPruneConfig(fraction=1 / 3, unit="kv_group", calibration_tokens=args.calibration_tokens), calib)
        details["heads"] = r.to_dict()
        log(f"heads: params {r.parameters_before} -> {r.parameters_after} in {r.seconds:.0f} s")
        add("heads -1/3 (1 KV group/layer)", m, f"params {r.parameters_before}->{r.parameters_after}")
    if "ffn" not in skip or "distill" not in skip:
        m = copy.deepcopy(base)
        r = prune_(m, FFNChannelPruneConfig(args.ffn_fraction, calibration_tokens=args.calibration_tokens), calib)
        details["ffn"] = {k: v for k, v in r.to_dict().items() if k != "structured"}
        details["ffn"]["d_ff_after"] = [s.after["d_ff"] for s in r.structured]
        log(f"ffn: params {r.parameters_before} -> {r.parameters_after} in {r.seconds:.0f} s")
        if "ffn" not in skip:
            add(f"FFN channels -{args.ffn_fraction:.0%}", m, f"params {r.parameters_before}->{r.parameters_after}")
        if "distill" not in skip:
            student = copy.deepcopy(m)
            cfg = DistillConfig(
                temperature=args.temperature, steps=args.distill_steps, lr=args.lr,
                warmup_steps=max(1, args.distill_steps // 10), seed=0,
            )
            windows = TokenWindows(train_ids, args.seq_len, batch_size=1, seed=0)
            student.embed.weight.requires_grad_(False)  # embeddings (= tied lm_head) frozen: blocks are trained
            t_start = time.perf_counter()

            def progress(step, loss):
                if step % 10 == 0 or step == 1:
                    log(f"distill step {step}/{cfg.steps}: loss {loss:.4f} ({time.perf_counter() - t_start:.0f} s)")

            rep = distill(student, base, windows, cfg, progress=progress)
            details["distill"] = rep.to_dict()
            add(f"FFN -{args.ffn_fraction:.0%} + distilled", student,
                f"{rep.steps} steps x {args.seq_len} tokens, {rep.seconds:.0f} s, {rep.flops:.3g} FLOP")

    # speed round-robin: under a shared, fluctuating CPU, each round measures every variant once
    # and the median over rounds is reported, so load swings hit all rows alike.
    for rnd in range(args.speed_rounds):
        for row, (name, model, _) in zip(rows, variants):
            sp = measure_speed(
                lambda ids, model=model: model(ids), lambda ids, cache, model=model: decode.forward(model, ids, cache=cache), lambda: KVCache(), prompt,
                prefill_tokens=args.prefill_tokens, decode_tokens=args.decode_tokens,
            )
            row["speed_rounds"].append(sp.to_dict())
            log(f"speed round {rnd + 1}: {name}: prefill {sp.prefill_tokens_per_s:.1f} tok/s, decode {sp.decode_tokens_per_s:.1f} tok/s")
    for row in rows:
        row["prefill_tokens_per_s"] = statistics.median(r["prefill_tokens_per_s"] for r in row["speed_rounds"])
        row["decode_tokens_per_s"] = statistics.median(r["decode_tokens_per_s"] for r in row["speed_rounds"])
        # contention only ever adds time: the best round is the closest to the uncontended speed
        row["prefill_tokens_per_s_best"] = max(r["prefill_tokens_per_s"] for r in row["speed_rounds"])
        row["decode_tokens_per_s_best"] = max(r["decode_tokens_per_s"] for r in row["speed_rounds"])

    b = rows[0]
    print()
    print(f"SmolLM2-135M pruning on CPU ({torch.get_num_threads()} threads); eval {text.description} "
          f"({len(eval_ids)} tokens, window {args.window}, stride {args.stride}); calibration/training: {TRAIN_PLAY}")
    print(f"speed: {args.speed_rounds} round-robin rounds, 'median / best' tok/s; prefill {args.prefill_tokens} tokens, "
          f"decode {args.decode_tokens} tokens after a 32-token prompt; ratios are best-vs-best against the baseline")
    hdr = (f"{'variant':31s} {'bpb':>7s} {'Δbpb':>8s} {'prefill tok/s':>15s} {'x':>5s} {'decode tok/s':>13s} {'x':>5s} "
           f"{'weight MB':>9s} {'params':>11s} {'nonzero blk W':>13s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        pre = f"{r['prefill_tokens_per_s']:.0f} / {r['prefill_tokens_per_s_best']:.0f}"
        dec = f"{r['decode_tokens_per_s']:.1f} / {r['decode_tokens_per_s_best']:.1f}"
        print(f"{r['name']:31s} {r['bits_per_byte']:7.4f} {r['bits_per_byte'] - b['bits_per_byte']:+8.4f} "
              f"{pre:>15s} {r['prefill_tokens_per_s_best'] / b['prefill_tokens_per_s_best']:5.2f} "
              f"{dec:>13s} {r['decode_tokens_per_s_best'] / b['decode_tokens_per_s_best']:5.2f} {r['weight_bytes'] / 1e6:9.1f} "
              f"{r['parameters']:11,d} {r['nonzero_block_weights']:13,d}")
    if "distill" in details:
        d = details["distill"]
        print(f"\ndistillation: {d['steps']} steps, {d['tokens']} tokens, {d['seconds']:.0f} s, {d['flops']:.3g} FLOP "
              f"({FLOP_FORMULA}); loss {d['losses'][0]:.4f} -> {d['losses'][-1]:.4f}")
        by_name = {r["name"]: r for r in rows}
        before = by_name.get(f"FFN channels -{args.ffn_fraction:.0%}")
        after = by_name[f"FFN -{args.ffn_fraction:.0%} + distilled"]
        if before is not None:
            print(f"bits per byte of the FFN-pruned model: before distillation {before['bits_per_byte']:.4f}, "
                  f"after {after['bits_per_byte']:.4f} (baseline {b['bits_per_byte']:.4f})")
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "details": details}, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
