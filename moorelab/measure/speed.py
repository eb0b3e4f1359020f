"""Speed: prefill and decode throughput, with per-token latency percentiles.

Protocol: batch 1, float32 unless the model says otherwise, ``torch.inference_mode``, the
thread count in force (reported). Prefill: one forward pass over a prompt of ``prompt_tokens``
tokens, repeated; the median time gives tokens/s. Decode: greedy generation with the KV cache,
``new_tokens`` steps after a prefill of the prompt; every step is timed; tokens/s is
``new_tokens / Σ step times``, and p50/p90/p99 of the step latencies are reported. One warm-up
of each is run first and not counted.

Interference check: the process CPU time spent during the timed decode, divided by wall time ×
threads, is reported as ``decode_cpu_share``. With OpenMP's default (spinning) wait policy an
undisturbed run keeps every thread busy (share ~0.99 here); when other processes take cores
the share falls (measured: 0.89 with a competitor busy a quarter of the time, decode 14% slower;
0.67 with one of two cores fully taken, decode 53% slower) and the tokens/s of that row are not
comparable with the others. Slow-downs that leave the threads running (memory-bandwidth
contention, busy hyperthread siblings, VM steal) do not show in the share.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch


#: prompt tokens before a timed decode
DECODE_PROMPT_TOKENS = 32


@dataclass
class SpeedResult:
    """Measured speed of one model.

    Attributes:
        prefill_tokens: prompt length used for prefill, tokens.
        prefill_seconds: median wall time of one prefill pass, seconds.
        prefill_tokens_per_s: prefill_tokens / prefill_seconds.
        decode_tokens: new tokens generated per decode run.
        decode_tokens_per_s: new tokens / total step time.
        decode_latency_p50_ms, decode_latency_p90_ms, decode_latency_p99_ms: per-token latency
            percentiles, milliseconds.
        threads: torch intra-op threads.
        repeats: timed prefill repeats.
        decode_cpu_share: process CPU seconds / (wall seconds × threads) over the timed decode
            (see the module docstring; below ~0.9 means other processes took the cores).
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
    decode_cpu_share: float

    def to_dict(self) -> dict:
        """Fields as a dict (units in the field names)."""
        return asdict(self)


@torch.inference_mode()
def measure_prefill(forward: Callable[[torch.Tensor], Any], prompt: torch.Tensor, repeats: int = 3) -> float:
    """Median wall time of one prefill pass.

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
) -> list[float]:
    """Greedy decode with a KV cache; per-step wall times.

    Args:
        step: ``step(input_ids[1, t], cache) -> logits[1, t, V]``, appending to ``cache``.
        new_cache: returns an empty cache for one sequence.
        prompt: ``LongTensor[1, P]``.
        new_tokens: tokens to generate (≥ 1).

    Returns:
        Seconds per generated token (list of ``new_tokens``; the first includes nothing of the
        prefill, which is done before timing starts).
    """
    cache = new_cache()
    logits = step(prompt, cache)
    nxt = logits[:, -1:].argmax(-1)
    times = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        logits = step(nxt, cache)
        nxt = logits[:, -1:].argmax(-1)
        times.append(time.perf_counter() - t0)
    return times


def measure_decode_with_cpu_share(
    step: Callable[[torch.Tensor, Any], torch.Tensor],
    new_cache: Callable[[], Any],
    prompt: torch.Tensor,
    new_tokens: int,
) -> tuple[list[float], float]:
    """:func:`measure_decode` plus the CPU share of the call (module docstring).

    Returns:
        (seconds per generated token, process CPU seconds / (wall seconds × torch threads)).
    """
    cpu0, wall0 = time.process_time(), time.perf_counter()
    times = measure_decode(step, new_cache, prompt, new_tokens)
    share = (time.process_time() - cpu0) / max(1e-9, (time.perf_counter() - wall0) * torch.get_num_threads())
    return times, share


def measure_speed(
    forward: Callable[[torch.Tensor], Any],
    step: Callable[[torch.Tensor, Any], torch.Tensor],
    new_cache: Callable[[], Any],
    prompt: torch.Tensor,
    *,
    prefill_tokens: int,
    decode_tokens: int,
    decode_prompt_tokens: int = DECODE_PROMPT_TOKENS,
    repeats: int = 3,
) -> SpeedResult:
    """Prefill and decode speed of one model (protocol in the module docstring).

    Args:
        forward: ``LongTensor[1, T] -> logits`` without cache (prefill).
        step: ``(LongTensor[1, t], cache) -> logits[1, t, V]`` with cache (decode).
        new_cache: factory of an empty KV cache.
        prompt: ``LongTensor[1, ≥ prefill_tokens]`` of real text tokens.
        prefill_tokens: prompt length for prefill timing, tokens.
        decode_tokens: new tokens per decode run.
        decode_prompt_tokens: prompt length before decoding, tokens.
        repeats: timed prefill passes.

    Returns:
        :class:`SpeedResult`.

    Raises:
        ValueError: the prompt is shorter than ``prefill_tokens``.
    """
    if prompt.shape[1] < prefill_tokens:
        raise ValueError(f"prompt has {prompt.shape[1]} tokens, prefill needs {prefill_tokens}")
    pre = prompt[:, :prefill_tokens]
    t_prefill = measure_prefill(forward, pre, repeats=repeats)
    dp = prompt[:, :decode_prompt_tokens]
    measure_decode(step, new_cache, dp, min(4, decode_tokens))  # warm-up
    times, cpu_share = measure_decode_with_cpu_share(step, new_cache, dp, decode_tokens)
    ms = np.array(times) * 1e3
    return SpeedResult(
        prefill_tokens=prefill_tokens,
        prefill_seconds=t_prefill,
        prefill_tokens_per_s=prefill_tokens / t_prefill,
        decode_tokens=decode_tokens,
        decode_tokens_per_s=decode_tokens / float(np.sum(times)),
        decode_latency_p50_ms=float(np.percentile(ms, 50)),
        decode_latency_p90_ms=float(np.percentile(ms, 90)),
        decode_latency_p99_ms=float(np.percentile(ms, 99)),
        threads=torch.get_num_threads(),
        repeats=repeats,
        decode_cpu_share=cpu_share,
    )
