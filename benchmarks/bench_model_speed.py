"""Speed of our Transformer against `transformers` on SmolLM2-135M (float32, batch 1, 2 threads).

Measured in one run, each implementation in its own child process (so peak memory is its own),
alternating ours / transformers for ``--rounds`` rounds and keeping each one's best time:

* prefill tokens/s: one forward over a 512-token prompt (logits for every position);
* decode tokens/s: greedy generation of 128 new tokens after a 16-token prompt, KV cache on
  (tokens / wall time of the whole call);
* CPU milliseconds per token (process time, all threads; ratio = theirs / ours): less
  sensitive than wall time when other processes share the cores;
* peak RSS (MB) of the child process (load + runs).

Also estimates the memory-bandwidth ceiling for float32 decoding: bytes of weights read per
token / measured read bandwidth (the faster of ``torch.sum`` and ``ml_read_sum`` over a buffer the
size of the weights, :mod:`moorelab.measure.bandwidth`).

Targets (issue 3): decode >= 2x transformers, prefill >= 1x, peak memory <= transformers'.

Usage: ``python benchmarks/bench_model_speed.py [--rounds 2] [--prefill-tokens 512] [--new-tokens 128]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair. "
)


def child(impl: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from moorelab.model.generate import generate
    from moorelab.model.zoo import load_pretrained

    t0 = time.perf_counter()
    if impl == "ours":
        loaded = load_pretrained(args.model)
        model, tok, hf_dir = loaded.model, loaded.tokenizer, loaded.hf_dir
    else:
        import transformers
        from tokenizers import Tokenizer

        hf_dir = args.hf_dir
        model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
        tok = Tokenizer.from_file(f"{hf_dir}/tokenizer.json")
        tok.no_padding()
    load_s = time.perf_counter() - t0
    rss_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ids = tok.encode(TEXT * 20).ids
    prefill = torch.tensor([ids[: args.prefill_tokens]])
    prompt = torch.tensor([ids[:16]])
    assert prefill.shape[1] == args.prefill_tokens

    def run_prefill():
        if impl == "ours":
            return model(prefill)
        return model(prefill, use_cache=False).logits

    def run_decode():
        if impl == "ours":
            return generate(model, prompt, max_new_tokens=args.new_tokens)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)

    with torch.inference_mode():
        model(prefill[:, :32]) if impl == "ours" else model(prefill[:, :32])  # warm-up
        best_p = best_d = cpu_p = cpu_d = float("inf")
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            run_prefill()
            best_p = min(best_p, time.perf_counter() - t)
            cpu_p = min(cpu_p, time.process_time() - c)
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            out = run_decode()
            best_d = min(best_d, time.perf_counter() - t)
            cpu_d = min(cpu_d, time.process_time() - c)
    return {
        "impl": impl,
        "hf_dir": str(hf_dir),
        "load_seconds": load_s,
        "prefill_tokens_per_s": args.prefill_tokens / best_p,
        "decode_tokens_per_s": args.new_tokens / best_d,
        "prefill_cpu_ms_per_token": 1e3 * cpu_p / args.prefill_tokens,
        "decode_cpu_ms_per_token": 1e3 * cpu_d / args.new_tokens,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": rss_load,
        "tokens": out[0, 16:].tolist(),
    }


def bandwidth_ceiling(n_bytes: int, threads: int) -> tuple[float, float]:
    """Read bandwidth (GB/s) over an ``n_bytes`` float32 buffer on ``threads`` threads (the faster of
    ``torch.sum`` and ``ml_read_sum``, best of 5 passes each:
    :func:`moorelab.measure.bandwidth.read_bandwidth`), and tokens/s if each token reads it once."""
    from moorelab.measure.bandwidth import read_bandwidth

    gbps = read_bandwidth(n_bytes=n_bytes, reps=5, threads=threads)["gb_per_s"]
    return gbps, gbps * 1e9 / n_bytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefill-tokens", type=int, default=512)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats inside each child (best kept)")
    p.add_argument("--rounds", type=int, default=2, help="alternating ours/transformers child runs")
    p.add_argument("--passive", action="store_true",
                   help="run both children with OMP_WAIT_POLICY=PASSIVE (much faster on a busy machine)")
    p.add_argument("--child", choices=["ours", "transformers"])
    p.add_argument("--hf-dir")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    base = [sys.executable, __file__, "--model", args.model, "--threads", str(args.threads),
            "--prefill-tokens", str(args.prefill_tokens), "--new-tokens", str(args.new_tokens),
            "--repeats", str(args.repeats)]
    env = dict(os.environ)
    if args.passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    load0 = os.getloadavg()[0]
    results: dict[str, list[dict]] = {"ours": [], "transformers": []}
    hf_dir = None
    for r in range(args.rounds):
        for impl in ("ours", "transformers"):
            cmd = base + ["--child", impl] + (["--hf-dir", hf_dir] if hf_dir else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            res = json.loads(out.strip().splitlines()[-1])
            hf_dir = res["hf_dir"]
            results[impl].append(res)
            print(f"round {r + 1} {impl:>12}: prefill {res['prefill_tokens_per_s']:7.1f} tok/s  "
                  f"decode {res['decode_tokens_per_s']:6.2f} tok/s  peak RSS {res['peak_rss_mb']:6.0f} MB", flush=True)

    best = {k: {m: max(x[m] for x in v) for m in ("prefill_tokens_per_s", "decode_tokens_per_s")} for k, v in results.items()}
    cpu = {k: {m: min(x[m] for x in v) for m in ("prefill_cpu_ms_per_token", "decode_cpu_ms_per_token")} for k, v in results.items()}
    peak = {k: min(x["peak_rss_mb"] for x in v) for k, v in results.items()}
    same = results["ours"][0]["tokens"] == results["transformers"][0]["tokens"]
    from safetensors import safe_open

    with safe_open(f"{hf_dir}/model.safetensors", "pt") as f:
        n_bytes = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys()) * 4
    gbps, ceiling = bandwidth_ceiling(n_bytes, args.threads)

    o, t = best["ours"], best["transformers"]
    print()
    print(f"SmolLM2-135M float32, batch 1, {args.threads} threads, best of {args.rounds} rounds x {args.repeats} repeats; "
          f"OMP_WAIT_POLICY={env.get('OMP_WAIT_POLICY', 'unset')}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'':18}{'ours':>10}{'transformers':>14}{'ratio':>8}{'target':>9}")
    rp = o["prefill_tokens_per_s"] / t["prefill_tokens_per_s"]
    rd = o["decode_tokens_per_s"] / t["decode_tokens_per_s"]
    rm = peak["ours"] / peak["transformers"]
    print(f"{'prefill tok/s':18}{o['prefill_tokens_per_s']:10.1f}{t['prefill_tokens_per_s']:14.1f}{rp:8.2f}{'>= 1.00':>9}")
    print(f"{'decode tok/s':18}{o['decode_tokens_per_s']:10.2f}{t['decode_tokens_per_s']:14.2f}{rd:8.2f}{'>= 2.00':>9}")
    for m, label in (("prefill_cpu_ms_per_token", "prefill CPU ms/tok"), ("decode_cpu_ms_per_token", "decode CPU ms/tok")):
        print(f"{label:18}{cpu['ours'][m]:10.2f}{cpu['transformers'][m]:14.2f}"
              f"{cpu['transformers'][m] / cpu['ours'][m]:8.2f}{'(info)':>9}")
    print(f"{'peak RSS MB':18}{peak['ours']:10.0f}{peak['transformers']:14.0f}{rm:8.2f}{'<= 1.00':>9}")
    print(f"read bandwidth {gbps:.1f} GB/s over {n_bytes / 1e6:.0f} MB of weights -> decode ceiling "
          f"~{ceiling:.1f} tok/s; ours reaches {o['decode_tokens_per_s'] / ceiling:.0%} of it")
    print(f"greedy tokens identical to transformers: {same}")
    print(f"targets: prefill {'met' if rp >= 1 else 'NOT met'}, decode {'met' if rd >= 2 else 'NOT met'}, "
          f"memory {'met' if rm <= 1 else 'NOT met'}")


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main()
