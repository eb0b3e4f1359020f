"""moorelab against llama.cpp on SmolLM2-135M, measured interleaved in one run, quality beside speed.

What it measures (2 threads by default), each figure the median of the rounds whose CPU share
was ≥ 0.9 (all rounds, marked "disturbed", when none was):

* **speed**, at each precision — float32 (ours) / F32 (llama.cpp), 8-bit (our int8 weights, one
  scale per output row, times int8 activations rounded per 32-block: Q8_0's activation rounding,
  ``int8-dynamic:activation_block=32``) / Q8_0, 4-bit (our int4 groups of 32 with int8 activation
  blocks) / Q4_1 — prefill
  tokens/s over a 512-token prompt (both engines compute the logits of the last position only,
  as generation needs them and as ``llama-bench`` does) and decode tokens/s at context depths 0, 1,024 and 4,096
  (the KV cache filled with that many tokens of the text first, untimed). In every round each
  precision is measured by both engines back to back (order alternating), precisions rotated.
  llama.cpp runs ``llama-bench -t T -p P -n N -d depths -r 1 -o json``; its CPU share comes from
  its threads' schedstat (:func:`moorelab.measure.llamacpp.run_measured`), ours from
  :class:`moorelab.measure.speed.CpuShareClock` — the same measure.
* **the read-bandwidth limit**: a read of 512 MiB, the best of 3 passes of each of two readers
  (``torch.sum`` and our ``ml_read_sum``, a plain linear read per thread; the faster counts, see
  :func:`moorelab.measure.bandwidth.read_bandwidth`) just before
  each engine's turn in each round (a ceiling for that moment, since other processes only slow a
  pass down; the host's bandwidth swings within a run), and of 5 at the start and the end; a
  decoded token reads every weight once (the embedding table only when it is also the output
  layer) plus the KV cache at that depth (ours float32, llama.cpp float16), so ``bandwidth /
  bytes per token`` is the decode ceiling. Each row prints the median over its kept rounds of
  that ceiling and of the fraction of it each round's decode reached (a round is kept when both
  the decode and its bandwidth passes ran at CPU share ≥ 0.9).
  **The read at each variant's own size**: the same readers over a buffer of the bytes our decode
  step reads at depth 0 (float32 ~538 MB, 8-bit ~135, 4-bit ~84), best of 5 passes at the start
  and at the end (each buffer made for its reads and freed after them, so none is held through
  the rounds), printed with the last-level cache the CPU reports
  (:func:`moorelab.measure.bandwidth.last_level_cache`); the limit is the better of the two reads
  (so its fraction is compared with the 512 MiB read's best, not with the per-round column).
  Where a variant's bytes fit in that cache (on 2026-12-03, under a 480 MiB L3, the 84 MB of
  int4 weights read 1.86x faster than 512 MiB, int8's 135 MB 1.27-1.36x), the 512 MiB read is
  not its ceiling: the decode reads partly from cache between steps, and only the own-size read
  says how near it is.
* **the matmul peak**: ``torch.mm`` float32 on a prefill-shaped product ([512, 576] @ [576,
  1536]), the best of 5 passes at the start and at the end; each prefill row prints its FLOP
  rate (decoder linears for every token, causal attention, the output layer once) and the
  fraction of that peak (quantized rows too, against the float32 peak);
* **quality**, beside every row: bits per byte of each of our variants on the text
  (``moorelab.measure.quality.score_text``, window 512, stride 256, as ``moorelab run``); and, to
  check our scorer independently, llama-perplexity on the same text file against our scorer
  under llama-perplexity's own rule (non-overlapping chunks of ``-c`` tokens, second half scored:
  :func:`moorelab.measure.quality.perplexity_llamacpp_rule`), both perplexities printed with
  their difference.
* **batched decode**: tokens/s and $ per 1M tokens at batch 1, 2, 4, 8, 16 (ragged prompts,
  :mod:`moorelab.measure.batched`), against ``llama-batched-bench`` (``-npl`` the same sizes).

The llama.cpp files: F32 and Q4_1 are written by moorelab's own GGUF writer
(:mod:`moorelab.improve.gguf_out`, from the float32 model and from our int4 variant, the same
weights), Q8_0 by ``llama-quantize`` from that F32 file. llama.cpp is built once with
``--build`` (:func:`moorelab.measure.llamacpp.build`, ~10–15 min on 2 idle cores, cached
outside the repository); without the binaries the llama.cpp columns are skipped, saying why.
``--llamacpp-isa avx2`` builds and runs a second llama.cpp for SSE4.2/AVX/AVX2/FMA/F16C/BMI2 and
nothing newer, and turns our one AVX-512 path (the int8 prefill GEMM's VNNI tile,
``ml_w8_gemm_isa``) off: llama.cpp and our C kernels on AVX2 (torch's own kernels, which run our
float32 matmuls, attention and element-wise operations, still use what the CPU has; the run prints
their level). On a CPU with AVX-512 or VNNI the default native
build uses them throughout and our kernels only there; the run prints both.

Usage::

    python benchmarks/bench_vs_llamacpp.py [--build] [--llamacpp-isa native|avx2] [--quick] [--rounds 3]
        [--depths 0,1024,4096] [--batch-sizes 1,2,4,8,16] [--threads 2] [--json out.json]

``--quick``: 3 rounds, depths 0 and 1,024, 32 decode tokens, 256-token prefill, batch 1, 4, 16,
a 6,000-character text.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from moorelab.measure import llamacpp  # noqa: E402
from moorelab.measure.bandwidth import (  # noqa: E402
    huge_page_fraction, last_level_cache, read_bandwidth, reference_buffer, thp_setting)
from moorelab.measure.speed import CPU_SHARE_MIN, CpuShareClock  # noqa: E402

PRECISIONS = ("float32", "8-bit", "4-bit")
LLAMA_TYPE = {"float32": "F32", "8-bit": "Q8_0", "4-bit": "Q4_1"}
OUR_SPEC = {"float32": None, "8-bit": "int8-dynamic:activation_block=32", "4-bit": "int4:group_size=32,activation_bits=8"}


def _span(recs: list[dict], key: str) -> str:
    """'lo-hi GB/s' of one reader's best passes over the bandwidth records, or 'not run'."""
    v = [r[key] for r in recs if r.get(key) is not None]
    return f"{min(v):.1f}-{max(v):.1f} GB/s" if v else "not run"


def fraction_of_limit(recs: list[tuple[float, float, float, float]], nbytes: int) -> dict:
    """Decode against the read-bandwidth limit, round by round: ``recs`` are (tokens/s, CPU
    share of the decode, GB/s measured just before it, CPU share of those bandwidth passes).
    A round's limit is GB/s × 1e9 / ``nbytes`` (bytes per token, tokens/s) and its fraction
    tokens/s / limit. Kept: rounds whose decode and bandwidth passes both ran at CPU share ≥
    CPU_SHARE_MIN (all rounds when none did: ``disturbed``). Returns the medians of the kept
    rounds' limits and fractions (so limit × fraction need not equal the decode median), the
    per-round fractions, and how many rounds were kept."""
    kept = [r for r in recs if r[1] >= CPU_SHARE_MIN and r[3] >= CPU_SHARE_MIN]
    use = kept or recs
    limits = [g * 1e9 / nbytes for _, _, g, _ in use]
    fr = [v / lim for (v, _, _, _), lim in zip(use, limits)]
    return {"fraction": statistics.median(fr), "limit": statistics.median(limits), "fractions": fr,
            "kept": len(kept), "disturbed": not kept}


def our_bytes_per_token(model) -> int:
    """Weights a decoded token reads: every linear layer (lm_head included); the embedding table
    only when it is the output layer too (else one row, negligible)."""
    from moorelab.measure.resources import weight_bytes

    total = weight_bytes(model)
    head = model.lm_head
    tied = head is not None and getattr(head, "weight", None) is not None and \
        head.weight.untyped_storage().data_ptr() == model.embed.weight.untyped_storage().data_ptr()
    if not tied:
        total -= model.embed.weight.numel() * model.embed.weight.element_size()
    return total


def gguf_bytes_per_token(path: Path) -> int:
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    return sum(int(t.n_bytes) for t in r.tensors if not (t.name == "token_embd.weight" and "output.weight" in names))


def matmul_peak(m: int = 512, k: int = 576, n: int = 1536, reps: int = 5) -> dict:
    """float32 matmul throughput (GFLOP/s) of ``torch.mm`` on a prefill-shaped product (``[m, k] @
    [k, n]``: a 512-token prompt through SmolLM2's gate projection): the best of ``reps`` timed
    passes of 10 products (a ceiling, as :func:`bandwidth`), the median, and the median CPU share."""
    x, w = torch.randn(m, k), torch.randn(k, n)
    torch.mm(x, w)
    clock, times, shares = CpuShareClock(), [], []
    for _ in range(reps):
        clock.start()
        t = time.perf_counter()
        for _ in range(10):
            torch.mm(x, w)
        times.append((time.perf_counter() - t) / 10)
        shares.append(clock.stop())
    flop = 2 * m * k * n
    return {"gflop_per_s": flop / min(times) / 1e9, "gflop_per_s_median": flop / statistics.median(times) / 1e9,
            "cpu_share": statistics.median(shares), "shape": [m, k, n]}


def prefill_flop(cfg, prompt: int) -> float:
    """FLOP of a ``prompt``-token prefill that outputs the last position's logits only: every
    decoder linear for every token (2 · weights · tokens), causal attention (QKᵀ and PV over
    ``t`` keys for token ``t``: 4 · n_heads · head_dim · Σ t, per layer), the output layer once."""
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.head_dim
    per_token = cfg.n_layers * (d * cfg.n_heads * hd * 2 + d * cfg.n_kv_heads * hd * 2 + 3 * d * f)
    attn = cfg.n_layers * 4 * cfg.n_heads * hd * prompt * (prompt + 1) / 2
    return 2.0 * per_token * prompt + attn + 2.0 * d * cfg.vocab_size


def kv_bytes(cfg, depth: int, elem: int) -> int:
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * depth * elem


def median_kept(recs: list[tuple[float, ...]]) -> dict:
    """``{"value", "cpu_share", "kept", "n", "disturbed"}`` from (figure, share[, GB/s]) tuples."""
    kept = [r for r in recs if r[1] >= CPU_SHARE_MIN]
    use = kept or recs
    return {"value": statistics.median(r[0] for r in use), "cpu_share": statistics.median(r[1] for r in use),
            "kept": len(kept), "n": len(recs), "disturbed": not kept}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--build", action="store_true", help="build llama.cpp first if it is not built")
    p.add_argument("--no-llamacpp", action="store_true", help="measure moorelab only")
    p.add_argument("--llamacpp-isa", choices=sorted(llamacpp.ISAS), default="native",
                   help="native: llama.cpp built for all this CPU has (AVX-512/VNNI where present); avx2: the "
                        "instruction set of moorelab's C kernels (their VNNI tile turned off too); torch's kernels are not limited")
    p.add_argument("--rounds", type=int)
    p.add_argument("--depths")
    p.add_argument("--batch-sizes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-tokens", type=int)
    p.add_argument("--decode-tokens", type=int)
    p.add_argument("--usd-per-hour", type=float, default=0.10)
    p.add_argument("--json", type=Path, help="write every figure here")
    a = p.parse_args()
    q = a.quick
    rounds = a.rounds or 3
    depths = [int(x) for x in (a.depths or ("0,1024" if q else "0,1024,4096")).split(",")]
    batch_sizes = [int(x) for x in (a.batch_sizes or ("1,4,16" if q else "1,2,4,8,16")).split(",")]
    P = a.prefill_tokens or (256 if q else 512)
    N = a.decode_tokens or (32 if q else 128)
    n_ctx = 256 if q else 512
    torch.set_num_threads(a.threads)

    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.improve.gguf_out import tokenizer_source, write_gguf
    from moorelab.measure.batched import measure_batched_decode
    from moorelab.measure.quality import perplexity_llamacpp_rule, score_text
    from moorelab.measure.text import default_text, take_prefix
    from moorelab.model import decode
    from moorelab.model.tokenize import encode_text
    from moorelab.model.transformer import KVCache
    from moorelab.model.zoo import load_pretrained

    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    bins, why = None, "--no-llamacpp given"
    if not a.no_llamacpp:
        if a.build:
            bins = llamacpp.build(log=lambda s: print(s, flush=True), isa=a.llamacpp_isa)
        bins = llamacpp.binaries(a.llamacpp_isa)
        why = llamacpp.status(a.llamacpp_isa)
    print(f"llama.cpp: {why}", flush=True)
    extras = llamacpp.cpu_extras()
    from moorelab import kernels

    klib = kernels.get_library()
    if klib is not None and a.llamacpp_isa == "avx2":
        klib.w8_gemm_isa(0)  # our one AVX-512 path off too: our C kernels on AVX2, as llama.cpp
    our_isa = "AVX2/FMA/F16C" + (", AVX512-VNNI in the int8 prefill GEMM"
                                 if klib is not None and klib.w8_gemm_isa(-1) == 1 else "")
    our_isa += f"; torch's own kernels: {torch.backends.cpu.get_cpu_capability()}"
    print(f"moorelab C kernels: {our_isa}", flush=True)
    if bins and a.llamacpp_isa == "native" and extras:
        print(f"note: this CPU has {', '.join(extras)}, which the native llama.cpp build uses throughout and "
              f"moorelab's C kernels only as said above; --llamacpp-isa avx2 runs llama.cpp and our C kernels on AVX2",
              flush=True)

    loaded = load_pretrained("smollm2-135m")
    tok = loaded.tokenizer
    play = default_text()
    all_ids = encode_text(tok, play.text)
    task = take_prefix(play, 6_000 if q else 20_000)
    task_ids = encode_text(tok, task.text)
    need = max(depths) + N + 8
    if len(all_ids) < need:
        raise SystemExit(f"the play has {len(all_ids)} tokens, depth {max(depths)} needs {need}")
    models = {}
    for prec in PRECISIONS:
        m = loaded.model if prec == "float32" else load_pretrained("smollm2-135m").model
        if OUR_SPEC[prec]:
            apply(m, parse_spec(OUR_SPEC[prec]), ApplyContext())
        models[prec] = m
    cfg = loaded.model.config
    from moorelab.model.fused_decode import decode_weights, prepare_decode, steady

    for m in models.values():
        prepare_decode(m)  # the decode weights in one block in reading order (moorelab.model.weight_arena)

    # ---- llama.cpp files
    files: dict[str, Path] = {}
    if bins:
        d = llamacpp.root() / "models"
        d.mkdir(parents=True, exist_ok=True)
        src = tokenizer_source(loaded.source, loaded.hf_dir)
        files["float32"] = d / "smollm2-135m.moorelab.F32.gguf"
        files["4-bit"] = d / "smollm2-135m.moorelab.int4g32.Q4_1.gguf"
        files["8-bit"] = d / "smollm2-135m.llama-quantize.Q8_0.gguf"
        if not files["float32"].is_file():
            write_gguf(models["float32"], files["float32"], src, name="SmolLM2-135M float32 (moorelab)")
        if not files["4-bit"].is_file():
            write_gguf(models["4-bit"], files["4-bit"], src, name="SmolLM2-135M int4 g32 (moorelab)")
        if not files["8-bit"].is_file():
            llamacpp.run_measured([str(bins["llama-quantize"]), "--allow-requantize", str(files["float32"]),
                                   str(files["8-bit"]), "Q8_0"], threads=a.threads)

    # ---- bandwidth (start)
    bw_buf = reference_buffer(512 << 20)  # on huge pages where the host allows, as our packed weights
    huge = {"reference": huge_page_fraction([bw_buf])}
    for prec, m in models.items():
        ws = decode_weights(m)  # [] when the fused decode does not run this model: nothing to count
        huge[f"ours {prec}"] = huge_page_fraction(ws) if ws else None
    bw = [read_bandwidth(buf=bw_buf, reps=5)]
    peak = [matmul_peak()]
    # the read at each variant's own size (depth 0), start and end: its ceiling where it fits in cache
    own_bw: dict[str, list[dict]] = {prec: [] for prec in models}

    def read_own_sizes() -> None:
        for prec, m in models.items():  # one buffer at a time, freed before the next
            own_bw[prec].append(read_bandwidth(buf=reference_buffer(our_bytes_per_token(m)), reps=5))

    read_own_sizes()

    # ---- our caches filled once per depth (untimed); each measurement rewinds to the depth
    caches: dict[tuple[str, int], KVCache] = {}
    with torch.inference_mode():
        for prec, m in models.items():
            for dpt in depths:
                c = KVCache(max_len=dpt + N + 8)
                ctx = all_ids[:max(dpt, 1)]
                decode.forward(m, torch.tensor([ctx]), cache=c)
                caches[prec, dpt] = c
    prompt = torch.tensor([all_ids[:P]])
    nxt_tok = torch.tensor([[all_ids[P]]])

    ours: dict = {(pr, k): [] for pr in PRECISIONS for k in ["prefill"] + [f"d{x}" for x in depths]}
    theirs: dict = {k: [] for k in ours}
    theirs_pp_depth: dict = {}
    clock = CpuShareClock()
    bw_rounds: list[dict] = []
    for rnd in range(rounds):
        order = PRECISIONS[rnd % 3:] + PRECISIONS[:rnd % 3]
        for prec in order:
            engines = ("ours", "llama.cpp") if rnd % 2 == 0 else ("llama.cpp", "ours")
            for eng in engines:
                # the read bandwidth just before this engine's turn (best of 3 passes; see read_bandwidth)
                b_rnd = read_bandwidth(buf=bw_buf, reps=3)
                bw_rounds.append({"round": rnd + 1, "precision": prec, "engine": eng, **b_rnd})
                g_rnd = (b_rnd["gb_per_s"], b_rnd["cpu_share"])
                if eng == "ours":
                    m = models[prec]
                    with torch.inference_mode():
                        clock.start()
                        t0 = time.perf_counter()
                        # logits of the last position only, as llama-bench's prefill asks for
                        # (common_batch_get_one marks only the last token as an output)
                        m(prompt, last_only=True)
                        dt = time.perf_counter() - t0
                        ours[prec, "prefill"].append((P / dt, clock.stop()))
                        for dpt in depths:
                            c = caches[prec, dpt]
                            c.length = max(dpt, 1)
                            x = nxt_tok.clone()  # [1, 1]: each step's greedy pick is written into it
                            clock.start()
                            t0 = time.perf_counter()
                            with steady(m):  # as generate decodes (fused_decode.steady)
                                for _ in range(N):
                                    decode.forward(m, x, cache=c, greedy_into=x.view(-1))
                            dt = time.perf_counter() - t0
                            ours[prec, f"d{dpt}"].append((N / dt, clock.stop(), *g_rnd))
                    print(f"round {rnd + 1}/{rounds} ours {prec}: prefill {ours[prec, 'prefill'][-1][0]:.0f}, decode "
                          + ", ".join(f"d{x} {ours[prec, f'd{x}'][-1][0]:.1f}" for x in depths) + " tok/s", flush=True)
                elif bins:
                    run = llamacpp.run_measured([str(bins["llama-bench"]), "-m", str(files[prec]), "-t", str(a.threads),
                                                 "-p", str(P), "-n", str(N), "-d", ",".join(map(str, depths)),
                                                 "-r", "1", "-o", "json"], threads=a.threads)
                    for row in llamacpp.parse_bench_json(run.stdout):
                        dpt = int(row.get("n_depth", 0))
                        ts = float(row["avg_ts"])
                        if row["n_prompt"] and not row["n_gen"]:
                            if dpt == 0:
                                theirs[prec, "prefill"].append((ts, run.cpu_share))
                            theirs_pp_depth.setdefault((prec, dpt), []).append((ts, run.cpu_share))
                        elif row["n_gen"] and dpt in depths:
                            theirs[prec, f"d{dpt}"].append((ts, run.cpu_share, *g_rnd))
                    print(f"round {rnd + 1}/{rounds} llama.cpp {LLAMA_TYPE[prec]}: cpu share {run.cpu_share:.2f}, "
                          f"{run.wall_s:.0f} s", flush=True)
    bw.append(read_bandwidth(buf=bw_buf, reps=5))
    del bw_buf
    read_own_sizes()
    all_g = [b["gb_per_s"] for b in bw + bw_rounds]
    gbps = statistics.median(all_g)
    peak.append(matmul_peak())
    gflops = max(pk["gflop_per_s"] for pk in peak)

    # ---- quality beside every row
    quality = {}
    for prec, m in models.items():
        r = score_text(lambda x, m=m: m(x), task_ids, task.n_bytes, window=n_ctx, stride=n_ctx // 2,
                       bos_policy="first", bos_token_id=loaded.bos_token_id, batch_size=2)
        quality[prec] = {"bits_per_byte": r.bits_per_byte, "perplexity": r.perplexity}
    ppl_check = {}
    text_file = Path(tempfile.mkdtemp(prefix="moorelab-ppl-")) / "text.txt"
    text_file.write_text(task.text, encoding="utf-8")
    for prec, m in models.items():
        ourp = perplexity_llamacpp_rule(lambda x, m=m: m(x), task_ids, n_ctx, bos_token_id=None,
                                        decode=lambda t: tok.decode(t))
        entry = {"ours": {"ppl": ourp.perplexity, "chunks": ourp.chunks, "tokens": len(task_ids),
                          "bits_per_byte_chunk_rule": ourp.bits_per_byte}}
        if bins:
            run = llamacpp.run_measured([str(bins["llama-perplexity"]), "-m", str(files[prec]), "-f", str(text_file),
                                         "-c", str(n_ctx), "-b", str(n_ctx), "-t", str(a.threads)], threads=a.threads)
            lp = llamacpp.parse_perplexity(run.stdout + run.stderr)
            lp["bits_per_byte_chunk_rule"] = (ourp.tokens_scored * math.log(lp["ppl"]) / math.log(2) / ourp.scored_bytes
                                              if lp["chunks"] == ourp.chunks else None)
            entry["llama.cpp"] = lp
            entry["difference"] = lp["ppl"] / ourp.perplexity - 1
        ppl_check[prec] = entry

    # ---- batched decode
    batched = {"ours": measure_batched_decode(models["float32"], all_ids, batch_sizes, new_tokens=min(N, 32),
                                              prompt_len=32, spread=16, rounds=rounds, usd_per_hour=a.usd_per_hour)}
    if bins:
        run = llamacpp.run_measured([str(bins["llama-batched-bench"]), "-m", str(files["float32"]), "-c", "4096",
                                     "-b", "2048", "-ub", "512", "-npp", "32", "-ntg", str(min(N, 32)),
                                     "-npl", ",".join(map(str, batch_sizes)), "-t", str(a.threads)], threads=a.threads)
        rows = llamacpp.parse_batched_bench(run.stdout + run.stderr)
        for r in rows:
            r["usd_per_million_tokens"] = a.usd_per_hour / 3600 / r["s_tg"] * 1e6
        batched["llama.cpp"] = {"rows": rows, "cpu_share": run.cpu_share}

    # ---- tables
    print(f"\nSmolLM2-135M, {a.threads} threads, prefill {P} tokens, decode {N} tokens, {rounds} rounds "
          f"(medians of rounds with CPU share ≥ {CPU_SHARE_MIN}; load average {load0:.1f} at start); "
          f"read bandwidth {gbps:.1f} GB/s, {min(all_g):.1f}-{max(all_g):.1f} (the faster of torch.sum and ml_read_sum "
          f"where the kernels are built, over 512 MiB, the best of 3 passes each before each engine's turn in each "
          f"round, 5 at the start and the end; median and range; torch.sum alone {_span(bw + bw_rounds, 'gb_per_s_torch_sum')}, ml_read_sum alone "
          f"{_span(bw + bw_rounds, 'gb_per_s_read_sum')}; CPU share "
          f"{statistics.median(b['cpu_share'] for b in bw + bw_rounds):.2f}). 'limit/s' and 'of limit' pair each "
          f"round's decode with the bandwidth measured beside it (medians over the kept rounds)")
    print("on transparent huge pages (share of the bytes; the weights a decode step reads, fused_decode.decode_weights): "
          + ", ".join(f"{k} {'?' if v is None else f'{v:.0%}'}" for k, v in huge.items())
          + f" (host setting: {thp_setting()})" + ("; llama.cpp reads its GGUF through mmap, its default" if bins else ""))
    if bins:
        print(f"llama.cpp built with isa {a.llamacpp_isa} ({' '.join(llamacpp.ISAS[a.llamacpp_isa])}); "
              f"CPU extensions beyond AVX2/FMA/F16C: {', '.join(extras) or 'none'}")
    hdr = (f"{'precision':9} {'engine':10} {'ctx':>5} {'prefill/s':>9} {'decode/s':>9} {'ours/theirs':>11} "
           f"{'limit/s':>8} {'of limit':>8} {'share':>5} {'bits/byte':>9}")
    print(hdr)
    print("-" * len(hdr))
    table = []
    for prec in PRECISIONS:
        ob = our_bytes_per_token(models[prec])
        tb = gguf_bytes_per_token(files[prec]) if bins else None
        for dpt in depths:
            for eng in ("ours", "llama.cpp"):
                src = ours if eng == "ours" else theirs
                if not src[prec, f"d{dpt}"]:
                    continue
                dec = median_kept(src[prec, f"d{dpt}"])
                pre = median_kept(src[prec, "prefill"]) if dpt == 0 else None
                if eng == "llama.cpp" and (prec, dpt) in theirs_pp_depth and dpt:
                    pre = median_kept(theirs_pp_depth[prec, dpt])
                nbytes = (ob + kv_bytes(cfg, dpt, 4)) if eng == "ours" else (tb + kv_bytes(cfg, dpt, 2))
                fol = fraction_of_limit(src[prec, f"d{dpt}"], nbytes)
                limit = fol["limit"]
                ratio = ""
                if eng == "ours" and theirs[prec, f"d{dpt}"]:
                    ratio = f"{dec['value'] / median_kept(theirs[prec, f'd{dpt}'])['value']:.2f}"
                share = min(dec["cpu_share"], pre["cpu_share"] if pre else 1.0)
                bpb = quality[prec]["bits_per_byte"] if eng == "ours" else \
                    ppl_check[prec].get("llama.cpp", {}).get("bits_per_byte_chunk_rule")
                row = {"precision": prec, "engine": eng, "format": LLAMA_TYPE[prec] if eng != "ours" else OUR_SPEC[prec] or "float32",
                       "depth": dpt, "prefill_tokens_per_s": pre, "decode_tokens_per_s": dec,
                       "bytes_per_token": nbytes, "decode_limit_tokens_per_s": limit,
                       "fraction_of_limit": fol["fraction"], "fraction_of_limit_rounds": fol["fractions"],
                       "bits_per_byte": bpb}
                table.append(row)
                print(f"{prec:9} {eng if eng == 'ours' else LLAMA_TYPE[prec]:10} {dpt:5d} "
                      f"{(pre['value'] if pre else float('nan')):9.0f} {dec['value']:9.1f} {ratio:>11} {limit:8.1f} "
                      f"{fol['fraction']:8.0%} {share:5.2f} "
                      f"{(f'{bpb:.4f}' if bpb is not None else '-'):>9}"
                      + ("  disturbed" if dec["disturbed"] or fol["disturbed"] or (pre and pre["disturbed"]) else ""))
    llc = last_level_cache()
    print(f"\nthe read at each variant's own size (a buffer of the bytes our decode step reads at depth 0, the faster "
          f"reader's best of 5 passes at the start and at the end, the better one the limit; last-level cache reported: "
          f"{f'L{llc[0]} {llc[1] / 1e6:.0f} MB' if llc else 'unknown'}):")
    own_size = {}
    for prec in PRECISIONS:
        ob, passes = our_bytes_per_token(models[prec]), own_bw[prec]
        g = max(b["gb_per_s"] for b in passes)
        d0 = next((r for r in table if r["precision"] == prec and r["engine"] == "ours" and r["depth"] == 0), None)
        lim = g * 1e9 / ob
        frac = d0["decode_tokens_per_s"]["value"] / lim if d0 else None
        own_size[prec] = {"bytes": ob, "gb_per_s": [b["gb_per_s"] for b in passes],
                          "cpu_share": [b["cpu_share"] for b in passes], "huge_page_fraction": passes[0]["huge_page_fraction"],
                          "fits_last_level_cache": bool(llc and ob <= llc[1]), "decode_limit_tokens_per_s": lim,
                          "fraction_of_limit_depth0": frac}
        print(f"  {prec:8} {ob / 1e6:6.1f} MB: {' / '.join(f'{x:.1f}' for x in own_size[prec]['gb_per_s'])} GB/s "
              f"({' / '.join(f'{b0 / b1:.2f}' for b0, b1 in zip(own_size[prec]['gb_per_s'], (b['gb_per_s'] for b in bw)))}x "
              f"the 512 MiB read at start / end; CPU share "
              f"{min(own_size[prec]['cpu_share']):.2f}){' (fits the last-level cache)' if own_size[prec]['fits_last_level_cache'] else ''}"
              + (f"; limit {lim:.1f} tok/s, ours at depth 0 {d0['decode_tokens_per_s']['value']:.1f} = {frac:.0%}" if d0 else ""))
    pflop = prefill_flop(cfg, P)
    print(f"\nprefill against the float32 matmul peak measured in the same run ({gflops:.0f} GFLOP/s, best torch.mm "
          f"pass [512, 576] @ [576, 1536], start and end; CPU share {statistics.median(pk['cpu_share'] for pk in peak):.2f});"
          f" {pflop / 1e9:.1f} GFLOP per {P}-token prefill (last position's logits only):")
    for r in table:
        if r["depth"] == 0 and r["prefill_tokens_per_s"]:
            g = pflop * r["prefill_tokens_per_s"]["value"] / P / 1e9
            r["prefill_gflop_per_s"], r["prefill_fraction_of_matmul_peak"] = g, g * 1e9 / (gflops * 1e9)
            print(f"  {r['precision']:8} {r['engine'] if r['engine'] == 'ours' else LLAMA_TYPE[r['precision']]:9} "
                  f"{r['prefill_tokens_per_s']['value']:6.0f} tok/s = {g:5.1f} GFLOP/s = {g / gflops:4.0%} of the peak")
    print("bits/byte: ours = score_text (window %d, stride %d, every token once); llama.cpp = its perplexity "
          "under its chunk rule, per byte of the scored tokens (not the same rule: compare within a column)" % (n_ctx, n_ctx // 2))
    print(f"\nscorer check: perplexity under llama-perplexity's rule (-c {n_ctx}, non-overlapping chunks, second half scored)")
    for prec, e in ppl_check.items():
        line = f"  {prec:8} ours {e['ours']['ppl']:.4f} ({e['ours']['chunks']} chunks of {len(task_ids)} tokens)"
        if "llama.cpp" in e:
            lp = e["llama.cpp"]
            line += (f"  llama.cpp {LLAMA_TYPE[prec]} {lp['ppl']:.4f} ± {lp['ppl_err']:.4f} ({lp['chunks']} chunks)"
                     f"  difference {e['difference']:+.2%}")
        print(line)
    print(f"\nbatched decode (float32; ragged prompts of 32-48 tokens; {min(N, 32)} tokens per sequence; "
          f"${a.usd_per_hour}/hour):")
    their_rows = {r["b"]: r for r in batched.get("llama.cpp", {}).get("rows", [])}
    for r in batched["ours"]:
        b = r["batch"]
        line = (f"  batch {b:3d}: ours {r['decode_tokens_per_s']['value']:7.1f} tok/s "
                f"${r['usd_per_million_tokens']['value']:.3f}/1M (share {r['cpu_share']:.2f}, {r['path']})")
        if b in their_rows:
            t = their_rows[b]
            line += (f"  llama.cpp {t['s_tg']:7.1f} tok/s ${t['usd_per_million_tokens']:.3f}/1M"
                     f"  ours/theirs {r['decode_tokens_per_s']['value'] / t['s_tg']:.2f}")
        print(line)
    elapsed = time.perf_counter() - t_start
    print(f"\nelapsed {elapsed:.0f} s; load average {os.getloadavg()[0]:.1f} at the end")
    if a.json:
        a.json.write_text(json.dumps({"settings": {"threads": a.threads, "prefill_tokens": P, "decode_tokens": N,
                                                   "rounds": rounds, "depths": depths, "n_ctx_quality": n_ctx,
                                                   "llama.cpp": why, "llama.cpp_isa": a.llamacpp_isa,
                                                   "cpu_extras": extras, "moorelab_kernels": our_isa,
                                                   "load_average_start": load0},
                                      "bandwidth": bw, "bandwidth_rounds": bw_rounds, "huge_pages": huge,
                                      "own_size_bandwidth": own_size, "last_level_cache": llc,
                                      "thp_setting": thp_setting(), "matmul_peak": peak, "rows": table, "quality": quality, "scorer_check": ppl_check,
                                      "batched": batched, "elapsed_s": elapsed}, indent=1, default=str))


if __name__ == "__main__":
    main()
