"""Batched decode: several sequences of different lengths decoded together, tokens/s and $ per 1M
tokens against the batch size.

Each sequence keeps its own length: the prompts are left-padded to the longest, the padding is
masked out of attention (``attention_mask``, kept in the :class:`~moorelab.model.transformer.KVCache`)
and every row's positions count its own tokens only (``cumsum(mask) - 1``), so row ``b`` computes
what it would alone (:func:`batched_greedy` is tested equal to decoding each sequence by itself).
On the per-op path the padded columns are still read by attention (masked), so a very ragged
batch does some wasted attention work (the fused path starts each row at its first real token); the weights — what decode time is mostly spent reading — are read once
per step for all rows, which is where batching gains.

Paths: the prompts are prefilled by ``Transformer.forward`` (batch > 1: left-padded, with the
mask); every decode step goes through :func:`moorelab.model.decode.forward`, the fused path when
the model allows it (``ml_decode_batch``: every layer of all rows in one compiled call, each
weight read once for the batch, each row attending to its own tokens), else the per-op
``Transformer.forward``. Each point names its path.
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

from moorelab.measure.speed import CPU_SHARE_MIN, CpuShareClock
from moorelab.model import decode as decode_mod
from moorelab.model.fused_decode import steady
from moorelab.model.transformer import KVCache


def _left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), n), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, n - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[b, n - len(p):] = 1
    return ids, mask


@torch.inference_mode()
def batched_greedy(model, prompts: Sequence[Sequence[int]], new_tokens: int, pad_id: int = 0,
                   return_logits: bool = False, step_times: list | None = None):
    """Greedy-decode ``new_tokens`` for every prompt at once (ragged lengths; module docstring).

    Args:
        model: a decoder :class:`~moorelab.model.transformer.Transformer`.
        prompts: B token lists, each ≥ 1 token, of any lengths.
        new_tokens: decode steps (≥ 1).
        pad_id: the id put in padded places (masked; any valid id).
        return_logits: also return the logits of every step, ``[B, new_tokens, V]``.
        step_times: if a list, the wall time of each decode step (s) is appended.

    Returns:
        ``LongTensor[B, new_tokens]`` of generated ids (and the logits when asked).

    Raises:
        ValueError: no prompts, an empty prompt, or ``new_tokens < 1``.
    """
    if not prompts or any(len(p) == 0 for p in prompts) or new_tokens < 1:
        raise ValueError("batched_greedy: needs ≥ 1 non-empty prompt and new_tokens ≥ 1")
    B = len(prompts)
    cache = KVCache(max_len=max(len(p) for p in prompts) + new_tokens)
    if B == 1:
        logits = decode_mod.forward(model, torch.tensor([list(prompts[0])]), cache=cache)
    else:
        ids, mask = _left_pad(prompts, pad_id)
        logits = model(ids, attention_mask=mask, cache=cache, last_only=True)
    nxt = decode_mod.greedy(logits[:, -1])[:, None]
    out, all_logits = [], []
    with steady(model):  # nothing changes the model between these steps (fused_decode.steady)
        for _ in range(new_tokens):
            out.append(nxt.clone())
            t0 = time.perf_counter()
            # the next tokens written into nxt, picked inside the fused call (decode.forward's greedy_into)
            logits = decode_mod.forward(model, nxt, cache=cache, greedy_into=nxt.view(-1))
            if step_times is not None:
                step_times.append(time.perf_counter() - t0)
            if return_logits:
                all_logits.append(logits[:, -1])
    gen = torch.cat(out, dim=1)
    return (gen, torch.stack(all_logits, dim=1)) if return_logits else gen


def ragged_prompts(token_ids: Sequence[int], batch: int, base_len: int, spread: int = 0) -> list[list[int]]:
    """``batch`` prompts cut from consecutive places of a real text, lengths
    ``base_len + (b * 37) % (spread + 1)`` (ragged when ``spread > 0``).

    Raises:
        ValueError: the text is too short for them.
    """
    prompts, at = [], 0
    for b in range(batch):
        n = base_len + ((b * 37) % (spread + 1) if spread else 0)
        if at + n > len(token_ids):
            at = 0
        if n > len(token_ids):
            raise ValueError(f"ragged_prompts: a prompt of {n} tokens but the text has {len(token_ids)}")
        prompts.append(list(token_ids[at:at + n]))
        at += n
    return prompts


def measure_batched_decode(model, token_ids: Sequence[int], batch_sizes: Sequence[int], *, new_tokens: int = 16,
                           prompt_len: int = 32, spread: int = 16, rounds: int = 3, usd_per_hour: float = 0.10,
                           min_share: float = CPU_SHARE_MIN) -> list[dict]:
    """Decode tokens/s and $ per 1M decoded tokens at each batch size (batch sizes interleaved
    within each round, ``rounds`` rounds, medians of the undisturbed ones).

    Args:
        model: the decoder to time.
        token_ids: real text tokens the prompts are cut from (:func:`ragged_prompts`).
        batch_sizes: e.g. ``(1, 4, 16)``.
        new_tokens: timed decode steps per measurement (every row decodes them all).
        prompt_len, spread: prompt lengths ``prompt_len .. prompt_len + spread``.
        rounds: measurements per batch size.
        usd_per_hour: machine price behind $ per 1M tokens.
        min_share: a measurement whose CPU share is lower is disturbed (kept only if all are).

    Returns:
        One dict per batch size: ``batch``, ``decode_tokens_per_s`` (all rows: ``B × steps /
        Σ step time``), ``per_sequence_tokens_per_s``, ``usd_per_million_tokens``, ``cpu_share``
        (median of those used), ``rounds_kept``, ``figures_from``, ``path``, ``prompt_lengths``;
        each figure ``{"value", "unit"}``.

    Raises:
        ValueError: an empty or non-positive batch size list.
    """
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be ≥ 1, got {list(batch_sizes)}")
    clock = CpuShareClock()
    prompts = {b: ragged_prompts(token_ids, b, prompt_len, spread) for b in batch_sizes}
    for b in batch_sizes:  # warm-up
        batched_greedy(model, prompts[b], 2)
    recs: dict[int, list[tuple[float, float]]] = {b: [] for b in batch_sizes}
    paths: dict[int, str] = {}
    for rnd in range(rounds):
        order = list(batch_sizes)[rnd % len(batch_sizes):] + list(batch_sizes)[:rnd % len(batch_sizes)]
        for b in order:
            steps: list[float] = []
            clock.start()
            batched_greedy(model, prompts[b], new_tokens, step_times=steps)
            share = clock.stop()
            paths[b] = getattr(model, "last_decode_path", "python")
            recs[b].append((b * new_tokens / sum(steps), share))
    out = []
    for b in batch_sizes:
        kept = [r for r in recs[b] if r[1] >= min_share]
        use = kept or recs[b]
        tps = statistics.median(r[0] for r in use)
        out.append({
            "batch": b,
            "decode_tokens_per_s": {"value": tps, "unit": "tokens/s"},
            "per_sequence_tokens_per_s": {"value": tps / b, "unit": "tokens/s"},
            "usd_per_million_tokens": {"value": usd_per_hour / 3600.0 / tps * 1e6, "unit": "$/1M tokens"},
            "cpu_share": statistics.median(r[1] for r in use),
            "rounds_kept": len(kept),
            "figures_from": "undisturbed rounds" if kept else "every round (all disturbed)",
            "path": paths[b],
            "prompt_lengths": [len(p) for p in prompts[b]],
            "new_tokens": new_tokens,
        })
    return out
