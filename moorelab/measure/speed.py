"""Speed: prefill and decode throughput and per-token latency, measured so that a disturbed
measurement is caught, excluded and taken again, and ratios carry an interval.

Protocol (:func:`measure_interleaved`; `moorelab run` and `moorelab improve` both use it, through
:func:`moorelab.measure.task.measure_speed_rows`). Every variant is resident at once. After one
untimed warm-up of each (a prefill and a 4-token decode), ``rounds`` rounds are run; in each
round every variant is measured once, the variants interleaved and their order rotated by one
from round to round. One measurement is

* prefill: one forward pass without cache over the first ``prefill_tokens`` prompt tokens, timed;
  the caller's prefill computes logits of the last position only, as generation needs them (and
  as llama.cpp's ``llama-bench`` and ``transformers``' ``generate`` compute them), not the
  ``[T, vocab]`` logits a scorer needs (for SmolLM2 at 512 tokens those would add ~29 GFLOP);
* decode: the first ``decode_prompt_tokens`` prompt tokens are put into a fresh KV cache
  (untimed), then ``decode_tokens`` greedy steps are timed one by one.

Batch 1, float32 activations, ``torch.inference_mode``, the thread count in force (reported).

Disturbance check: the prefill and the decode each record their own CPU share (below). A
measurement with either share under ``min_share`` (:data:`CPU_SHARE_MIN`, 0.9) is *disturbed*:
it is excluded and the variant is measured again at the end of the same round (at most
``max_tries`` tries per variant and round, at most ``max_remeasure`` re-measurements in all;
every try stays in the record). The figures of a variant are the medians of its undisturbed
rounds (prefill tokens/s, decode tokens/s = ``decode_tokens`` / Σ step times), and the latency
p50/p90/p99 are percentiles of the step times pooled over those rounds. A variant with fewer
than :func:`min_pairs` (``confidence``) undisturbed rounds is flagged ``disturbed``: its figures
are still given (from what was kept, or from every try if none was), but no ratio is claimed.

Ratios to the baseline (:func:`paired_ratio`) pair the variant's and the baseline's undisturbed
measurements of the same round (taken seconds apart, so slow load swings and drift hit both):
the ratio is the median of the per-round ratios, with a distribution-free interval for that
median from order statistics (the sign-test interval, e.g. Conover, *Practical Nonparametric
Statistics*, 3rd ed., 1999, §3.2): with n pairs, ``[r_(k), r_(n+1-k)]`` covers the median with
probability ``1 − 2·P(Bin(n, ½) ≤ k − 1)``; the largest k reaching ``confidence`` (0.90) is
used, so 5 pairs give ``[min, max]`` at 93.75%, and fewer than 5 pairs claim nothing. (A
percentile bootstrap of a median over 5 rounds can only return the rounds' own values and
undercovers; the order-statistic interval is exact for any distribution.) An interval that
contains 1 is reported as "no measurable difference".

CPU share: CPU time the process's threads got, divided by CPU time got plus time they waited,
runnable, for a CPU: ``cpu / (cpu + run-queue wait)``, with ``cpu`` the process CPU time
(``time.process_time``) and the run-queue wait summed over the process's threads from
``/proc/self/task/*/schedstat`` (Linux schedstats, second field). Other processes that take the
cores make the threads wait; a thread that sleeps (OpenMP's passive wait policy, I/O) neither
runs nor waits, so the share does not depend on the wait policy. Measured here on SmolLM2
decode, spinning policy: 0.99 undisturbed, 0.51 and 0.19 with other work taking about one and
both cores, identical to the former measure ``cpu / (wall × threads)`` (0.99, 0.51, 0.19), which
reads ~0.3 on an undisturbed run under ``OMP_WAIT_POLICY=PASSIVE`` and is therefore kept only as
the fallback where schedstat is missing (``cpu_share_method`` says which was used). Earlier
calibration of that measure with the spinning policy: 0.95 with a competitor busy 10% of the
time (decode −7%), 0.89 at 25% (−14%), 0.67 with one core fully taken (−53%). Slow-downs that
leave the threads running (memory-bandwidth contention, busy hyperthread siblings, VM steal) do
not show in either measure.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

#: prompt tokens before a timed decode
DECODE_PROMPT_TOKENS = 32
#: a measurement whose CPU share is under this is disturbed (see the module docstring)
CPU_SHARE_MIN = 0.9
#: the figures :func:`measure_interleaved` gives ratios for, paired by round
SPEED_METRICS = ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_latency_p50_ms",
                 "decode_latency_p90_ms", "decode_latency_p99_ms")
_TASKS = "/proc/self/task"


# --------------------------------------------------------------------------- CPU share
def _run_queue_wait_ns() -> dict[str, int] | None:
    """Per-thread run-queue wait (ns) of this process from ``/proc/self/task/*/schedstat``, or
    None where the file does not exist (not Linux, or a kernel without schedstats)."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat") as f:
                out[tid] = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out or None


def cpu_share_method() -> str:
    """How :class:`CpuShareClock` measures here: ``"cpu/(cpu+run-queue wait)"`` (schedstat
    present) or ``"cpu/(wall x threads)"`` (fallback; needs OpenMP's spinning wait policy)."""
    return "cpu/(cpu+run-queue wait)" if _run_queue_wait_ns() is not None else "cpu/(wall x threads)"


class CpuShareClock:
    """CPU share of one interval (module docstring): ``start()``, the work, then ``stop()``.

    ``stop()`` returns the share (0..1; ~1 undisturbed). Threads that appear during the interval
    count from their start; threads that end during it drop out.
    """

    def __init__(self) -> None:
        self.schedstat = _run_queue_wait_ns() is not None

    def start(self) -> None:
        """Start the interval."""
        self._wait0 = _run_queue_wait_ns() if self.schedstat else None
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()

    def stop(self) -> float:
        """End the interval; returns its CPU share (also kept in ``last``)."""
        cpu = time.process_time() - self._cpu0
        wall = time.perf_counter() - self._wall0
        if self._wait0 is not None:
            w1 = _run_queue_wait_ns() or {}
            wait = sum(v - self._wait0.get(tid, 0) for tid, v in w1.items()) / 1e9
            self.last = cpu / max(1e-9, cpu + max(0.0, wait))
        else:
            self.last = cpu / max(1e-9, wall * torch.get_num_threads())
        return self.last


# --------------------------------------------------------------------------- single measurements
@torch.inference_mode()
def measure_prefill(forward: Callable[[torch.Tensor], Any], prompt: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of one prefill pass (one untimed warm-up first).

    Args:
        forward: model call on ``LongTensor[1, P]``.
        prompt: ``LongTensor[1, P]``.
        repeats: timed passes after one warm-up.

    Returns:
        Seconds (median).
    """
    forward(prompt)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward(prompt)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def measure_decode(
    step: Callable[[torch.Tensor, Any], torch.Tensor],
    new_cache: Callable[[], Any],
    prompt: torch.Tensor,
    new_tokens: int,
    clock: CpuShareClock | None = None,
    steady: Callable[[], ContextManager] | None = None,
) -> list[float]:
    """Greedy decode with a KV cache; per-step wall times.

    Args:
        step: ``step(input_ids[1, t], cache) -> logits[1, t, V]``, appending to ``cache``.
        new_cache: returns an empty cache for one sequence.
        prompt: ``LongTensor[1, P]``, put into the cache before timing starts.
        new_tokens: tokens to generate (≥ 1).
        clock: if given, started just before the first timed step and stopped after the last
            (its share is then in ``clock.last``).
        steady: if given, the prompt and every step run inside ``steady()`` (for moorelab
            models :func:`moorelab.model.fused_decode.steady`, as ``generate`` decodes).

    Returns:
        Seconds per generated token (list of ``new_tokens``). Each step's time includes picking
        the next token (:func:`moorelab.model.decode.greedy`, for every engine measured).
    """
    from moorelab.model.decode import greedy

    cache = new_cache()
    with steady() if steady is not None else contextlib.nullcontext():
        logits = step(prompt, cache)
        nxt = greedy(logits[:, -1])[:, None]
        times = []
        if clock is not None:
            clock.start()
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            logits = step(nxt, cache)
            nxt = greedy(logits[:, -1])[:, None]
            times.append(time.perf_counter() - t0)
        if clock is not None:
            clock.stop()
    return times


# --------------------------------------------------------------------------- ratio with interval
def median_interval_rank(n: int, confidence: float) -> tuple[int, float]:
    """Rank k of the order-statistic interval ``[x_(k), x_(n+1-k)]`` for a median, and its coverage.

    The largest k ≥ 1 whose coverage ``1 − 2·P(Bin(n, ½) ≤ k − 1)`` is at least ``confidence``;
    when even k = 1 falls short (n too small), k = 1 and its (lower) coverage.

    Raises:
        ValueError: n < 1 or confidence not in (0, 1).
    """
    if n < 1 or not 0 < confidence < 1:
        raise ValueError(f"median interval: need n ≥ 1 and 0 < confidence < 1, got n={n}, confidence={confidence}")
    best_k, best_cov = 1, 1 - 2 * 0.5 ** n
    cdf = 0.0  # P(Bin(n, 1/2) <= k - 1)
    for k in range(1, (n + 1) // 2 + 1):
        cdf += math.comb(n, k - 1) * 0.5 ** n
        cov = 1 - 2 * cdf
        if cov < confidence:
            break
        best_k, best_cov = k, cov
    return best_k, best_cov


def min_pairs(confidence: float) -> int:
    """Fewest rounds whose ``[min, max]`` covers the median with ``confidence`` (5 for 0.90)."""
    return max(1, math.ceil(math.log2(2 / (1 - confidence)) - 1e-12))


def paired_ratio(variant: dict[int, float], baseline: dict[int, float], *, confidence: float = 0.90,
                 larger_is: str = "higher") -> dict:
    """Ratio of a variant's figure to the baseline's from paired rounds, with an interval.

    Args:
        variant: round index -> the variant's figure in that round (undisturbed rounds only).
        baseline: round index -> the baseline's figure in that round (undisturbed rounds only).
        confidence: wanted coverage of the interval (module docstring).
        larger_is: word for a ratio > 1 in the verdict ("higher", "faster", ...).

    Returns:
        ``{"value": median of the per-round ratios, "ci": [lo, hi], "confidence": achieved
        coverage, "pairs": n, "verdict": "higher" | "lower" | "no measurable difference"
        | "not claimed: ..."}``; value and ci are None when fewer than :func:`min_pairs` rounds pair.
    """
    common = sorted(set(variant) & set(baseline))
    ratios = sorted(variant[i] / baseline[i] for i in common if baseline[i] > 0)
    n = len(ratios)
    need = min_pairs(confidence)
    if n < need:
        return {"value": None, "ci": None, "confidence": None, "pairs": n,
                "verdict": f"not claimed: {n} undisturbed paired rounds, {need} needed"}
    k, cov = median_interval_rank(n, confidence)
    lo, hi = ratios[k - 1], ratios[n - k]
    if lo <= 1.0 <= hi:
        verdict = "no measurable difference"
    else:
        verdict = larger_is if lo > 1.0 else {"higher": "lower", "faster": "slower", "more": "less"}.get(larger_is, "lower")
    return {"value": statistics.median(ratios), "ci": [lo, hi], "confidence": cov, "pairs": n, "verdict": verdict}


def invert_ratio(r: dict, larger_is: str = "higher") -> dict:
    """The ratio of the reciprocal figure (e.g. cost = 1 / tokens/s): value and interval inverted."""
    if r["value"] is None:
        return dict(r)
    lo, hi = r["ci"]
    out = {**r, "value": 1.0 / r["value"], "ci": [1.0 / hi, 1.0 / lo]}
    if r["verdict"] != "no measurable difference":
        out["verdict"] = larger_is if out["ci"][0] > 1 else {"higher": "lower"}.get(larger_is, "lower")
    return out


# --------------------------------------------------------------------------- the protocol
@dataclass
class SpeedVariant:
    """One model variant to time: its prefill call, its decode step, its cache factory and,
    optionally, the block its decode runs in (``measure_decode``'s ``steady``)."""

    name: str
    forward: Callable[[torch.Tensor], Any]
    step: Callable[[torch.Tensor, Any], torch.Tensor]
    new_cache: Callable[[], Any]
    steady: Callable[[], ContextManager] | None = None


@dataclass
class VariantSpeed:
    """What :func:`measure_interleaved` found for one variant (figures from undisturbed rounds).

    Attributes:
        name: variant name.
        prefill_tokens_per_s, decode_tokens_per_s: medians over the kept rounds, tokens/s.
        decode_latency_p50_ms, decode_latency_p90_ms, decode_latency_p99_ms: percentiles of the
            decode step times pooled over the kept rounds, ms/token.
        cpu_share: median CPU share of the kept measurements (prefill and decode).
        rounds_kept: rounds with an undisturbed measurement.
        measurements: measurements made (every try).
        remeasured: measurements that were re-takes of a disturbed one.
        disturbed_measurements: measurements excluded for a CPU share under the threshold.
        disturbed: fewer than the needed undisturbed rounds: figures shown, no ratio claimed.
        figures_from: "undisturbed rounds" or "every try (all disturbed)".
        per_round: round -> figures of the kept measurement (for paired ratios).
        tries: every measurement, in order: round, try, shares, figures, kept.
    """

    name: str
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    decode_latency_p50_ms: float
    decode_latency_p90_ms: float
    decode_latency_p99_ms: float
    cpu_share: float
    rounds_kept: int
    measurements: int
    remeasured: int
    disturbed_measurements: int
    disturbed: bool
    figures_from: str
    per_round: dict[int, dict] = field(default_factory=dict)
    tries: list[dict] = field(default_factory=list)


@dataclass
class InterleavedResult:
    """Result of :func:`measure_interleaved`: per-variant figures, paired ratios, the settings."""

    variants: list[VariantSpeed]
    ratios: dict[str, dict[str, dict]]
    settings: dict
    remeasured: int
    seconds: float

    def by_name(self, name: str) -> VariantSpeed:
        """The :class:`VariantSpeed` named ``name`` (KeyError if none)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def _round_figures(prefill_tokens: int, prefill_s: float, steps: list[float]) -> dict:
    ms = np.array(steps) * 1e3
    return {
        "prefill_tokens_per_s": prefill_tokens / prefill_s,
        "decode_tokens_per_s": len(steps) / float(np.sum(steps)),
        "decode_latency_p50_ms": float(np.percentile(ms, 50)),
        "decode_latency_p90_ms": float(np.percentile(ms, 90)),
        "decode_latency_p99_ms": float(np.percentile(ms, 99)),
    }


def measure_interleaved(
    variants: Sequence[SpeedVariant],
    prompt: torch.Tensor,
    *,
    prefill_tokens: int,
    decode_tokens: int,
    decode_prompt_tokens: int = DECODE_PROMPT_TOKENS,
    rounds: int = 5,
    max_tries: int = 3,
    max_remeasure: int | None = None,
    min_share: float = CPU_SHARE_MIN,
    confidence: float = 0.90,
    retry_pause_s: float = 0.25,
    on_measurement: Callable[[str, dict], None] | None = None,
) -> InterleavedResult:
    """Time every variant in interleaved rounds, re-measuring disturbed ones (module docstring).

    Args:
        variants: the variants, all resident; the first is the baseline of the ratios.
        prompt: ``LongTensor[1, ≥ max(prefill_tokens, decode_prompt_tokens)]`` of real text tokens.
        prefill_tokens: prompt length of the timed prefill, tokens.
        decode_tokens: timed decode steps per measurement.
        decode_prompt_tokens: prompt put in the cache before the timed decode, tokens.
        rounds: rounds (one undisturbed measurement of each variant wanted per round).
        max_tries: measurements of one variant in one round at most.
        max_remeasure: re-measurements in all at most (default ``rounds × len(variants)``: the
            protocol takes at most twice its undisturbed time).
        min_share: CPU share under which a measurement is disturbed.
        confidence: coverage of the ratio intervals; also fixes the undisturbed rounds a variant
            needs (:func:`min_pairs`: 5 at 0.90).
        retry_pause_s: sleep before a re-measurement (lets a burst of other work pass).
        on_measurement: called after every measurement with (variant name, its record).

    Returns:
        :class:`InterleavedResult`.

    Raises:
        ValueError: no variants, duplicate names, a prompt too short, rounds < 1 or max_tries < 1.
    """
    if not variants:
        raise ValueError("measure_interleaved: no variants")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"measure_interleaved: duplicate variant names {names}")
    if prompt.shape[1] < max(prefill_tokens, decode_prompt_tokens):
        raise ValueError(f"prompt has {prompt.shape[1]} tokens, the protocol needs {max(prefill_tokens, decode_prompt_tokens)}")
    if rounds < 1 or max_tries < 1:
        raise ValueError(f"measure_interleaved: rounds={rounds} and max_tries={max_tries} must be ≥ 1")
    if max_remeasure is None:
        max_remeasure = rounds * len(variants)
    t_start = time.perf_counter()
    pre = prompt[:, :prefill_tokens]
    dp = prompt[:, :decode_prompt_tokens]
    clock = CpuShareClock()
    with torch.inference_mode():
        for v in variants:  # warm-up, untimed
            v.forward(pre)
            measure_decode(v.step, v.new_cache, dp, min(4, decode_tokens), steady=v.steady)
    tries: dict[str, list[dict]] = {n: [] for n in names}
    steps_kept: dict[str, list[float]] = {n: [] for n in names}
    steps_all: dict[str, list[float]] = {n: [] for n in names}
    remeasured = 0
    for rnd in range(rounds):
        order = [variants[(i + rnd) % len(variants)] for i in range(len(variants))]
        queue = [(v, 1) for v in order]
        while queue:
            v, t = queue.pop(0)
            if t > 1:
                time.sleep(retry_pause_s)
            with torch.inference_mode():
                clock.start()
                t0 = time.perf_counter()
                v.forward(pre)
                prefill_s = time.perf_counter() - t0
                prefill_share = clock.stop()
                steps = measure_decode(v.step, v.new_cache, dp, decode_tokens, clock=clock, steady=v.steady)
            decode_share = clock.last
            kept = prefill_share >= min_share and decode_share >= min_share
            figs = _round_figures(prefill_tokens, prefill_s, steps)
            rec = {"round": rnd, "try": t, "kept": kept,
                   "prefill": {"tokens_per_s": figs["prefill_tokens_per_s"], "cpu_share": prefill_share},
                   "decode": {"tokens_per_s": figs["decode_tokens_per_s"], "cpu_share": decode_share,
                              "latency_p50_ms": figs["decode_latency_p50_ms"]},
                   "_figures": figs}
            tries[v.name].append(rec)
            steps_all[v.name].extend(steps)
            if kept:
                steps_kept[v.name].extend(steps)
            elif t < max_tries and remeasured < max_remeasure:
                remeasured += 1
                queue.append((v, t + 1))
            if on_measurement is not None:
                on_measurement(v.name, {k: x for k, x in rec.items() if k != "_figures"})
    need = min_pairs(confidence)
    out: list[VariantSpeed] = []
    for v in variants:
        recs = tries[v.name]
        kept = [r for r in recs if r["kept"]]
        use = kept or recs
        steps = steps_kept[v.name] if kept else steps_all[v.name]
        ms = np.array(steps) * 1e3
        shares = [r[p]["cpu_share"] for r in use for p in ("prefill", "decode")]
        out.append(VariantSpeed(
            name=v.name,
            prefill_tokens_per_s=statistics.median(r["_figures"]["prefill_tokens_per_s"] for r in use),
            decode_tokens_per_s=statistics.median(r["_figures"]["decode_tokens_per_s"] for r in use),
            decode_latency_p50_ms=float(np.percentile(ms, 50)),
            decode_latency_p90_ms=float(np.percentile(ms, 90)),
            decode_latency_p99_ms=float(np.percentile(ms, 99)),
            cpu_share=statistics.median(shares),
            rounds_kept=len(kept),
            measurements=len(recs),
            remeasured=sum(1 for r in recs if r["try"] > 1),
            disturbed_measurements=len(recs) - len(kept),
            disturbed=len(kept) < need,
            figures_from="undisturbed rounds" if kept else "every try (all disturbed)",
            per_round={r["round"]: r["_figures"] for r in kept},
            tries=[{k: x for k, x in r.items() if k != "_figures"} for r in recs],
        ))
    base = out[0]
    ratios: dict[str, dict[str, dict]] = {}
    for vs in out[1:]:
        ratios[vs.name] = {}
        for metric in SPEED_METRICS:
            if base.disturbed or vs.disturbed:
                who = "the baseline" if base.disturbed else "this variant"
                r = {"value": None, "ci": None, "confidence": None,
                     "pairs": len(set(vs.per_round) & set(base.per_round)),
                     "verdict": f"not claimed: {who} had fewer than {need} undisturbed rounds"}
            else:
                r = paired_ratio({i: f[metric] for i, f in vs.per_round.items()},
                                 {i: f[metric] for i, f in base.per_round.items()},
                                 confidence=confidence)
            ratios[vs.name][metric] = r
    settings = {
        "rounds": rounds, "max_tries_per_round": max_tries, "max_remeasure": max_remeasure,
        "min_cpu_share": min_share, "cpu_share_method": cpu_share_method(),
        "undisturbed_rounds_needed": need, "ratio_confidence": confidence,
        "prefill_tokens": prefill_tokens, "decode_tokens": decode_tokens,
        "decode_prompt_tokens": decode_prompt_tokens, "threads": torch.get_num_threads(),
        "order": "variants interleaved within each round, order rotated by one each round",
    }
    return InterleavedResult(out, ratios, settings, remeasured, time.perf_counter() - t_start)


# --------------------------------------------------------------------------- one model, one call
@dataclass
class SpeedResult:
    """Measured speed of one model (:func:`measure_speed`).

    Attributes:
        prefill_tokens: prompt length used for prefill, tokens.
        prefill_seconds: prefill_tokens / prefill_tokens_per_s, seconds.
        prefill_tokens_per_s: median over undisturbed rounds.
        decode_tokens: new tokens per decode measurement.
        decode_tokens_per_s: median over undisturbed rounds.
        decode_latency_p50_ms, decode_latency_p90_ms, decode_latency_p99_ms: per-token latency
            percentiles pooled over undisturbed rounds, milliseconds.
        threads: torch intra-op threads.
        repeats: rounds.
        cpu_share: median CPU share of the kept measurements.
        disturbed: fewer undisturbed rounds than the protocol needs.
    """

    prefill_tokens: int
    prefill_seconds: float
    prefill_tokens_per_s: float
    decode_tokens: int
    decode_tokens_per_s: float
    decode_latency_p50_ms: float
    decode_latency_p90_ms: float
    decode_latency_p99_ms: float
    threads: int
    repeats: int
    cpu_share: float
    disturbed: bool

    def to_dict(self) -> dict:
        """Fields as a dict (units in the field names)."""
        return asdict(self)


def measure_speed(
    forward: Callable[[torch.Tensor], Any],
    step: Callable[[torch.Tensor, Any], torch.Tensor],
    new_cache: Callable[[], Any],
    prompt: torch.Tensor,
    *,
    prefill_tokens: int,
    decode_tokens: int,
    decode_prompt_tokens: int = DECODE_PROMPT_TOKENS,
    repeats: int = 5,
) -> SpeedResult:
    """Prefill and decode speed of one model: :func:`measure_interleaved` with one variant.

    Args:
        forward: ``LongTensor[1, T] -> logits`` without cache (prefill).
        step: ``(LongTensor[1, t], cache) -> logits[1, t, V]`` with cache (decode).
        new_cache: factory of an empty KV cache.
        prompt: ``LongTensor[1, ≥ prefill_tokens]`` of real text tokens.
        prefill_tokens: prompt length for prefill timing, tokens.
        decode_tokens: new tokens per decode measurement.
        decode_prompt_tokens: prompt length before decoding, tokens.
        repeats: rounds.

    Returns:
        :class:`SpeedResult`.

    Raises:
        ValueError: the prompt is shorter than ``prefill_tokens``.
    """
    res = measure_interleaved([SpeedVariant("model", forward, step, new_cache)], prompt,
                              prefill_tokens=prefill_tokens, decode_tokens=decode_tokens,
                              decode_prompt_tokens=decode_prompt_tokens, rounds=repeats)
    v = res.variants[0]
    return SpeedResult(
        prefill_tokens=prefill_tokens, prefill_seconds=prefill_tokens / v.prefill_tokens_per_s,
        prefill_tokens_per_s=v.prefill_tokens_per_s, decode_tokens=decode_tokens,
        decode_tokens_per_s=v.decode_tokens_per_s, decode_latency_p50_ms=v.decode_latency_p50_ms,
        decode_latency_p90_ms=v.decode_latency_p90_ms, decode_latency_p99_ms=v.decode_latency_p99_ms,
        threads=torch.get_num_threads(), repeats=repeats, cpu_share=v.cpu_share, disturbed=v.disturbed,
    )
