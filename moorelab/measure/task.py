"""The task every model variant is measured on, the same way: quality, speed, resources, cost.

A row is produced by :func:`measure_model` (quality and resources, one variant at a time) and
completed by :func:`measure_speed_rows` (speed and cost, every variant resident, timed in
interleaved rounds by :func:`moorelab.measure.speed.measure_interleaved`); the format is
described in :mod:`moorelab.measure.row`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from moorelab.measure import resources
from moorelab.measure.quality import score_text
from moorelab.measure.row import METRICS, make_row, metric
from moorelab.measure.speed import DECODE_PROMPT_TOKENS, InterleavedResult, SpeedVariant, invert_ratio, measure_interleaved
from moorelab.measure.text import Text


@dataclass
class Budget:
    """How much work a run does (characters of text, window sizes, speed-test lengths).

    ``speed_rounds`` and ``speed_max_tries`` are the rounds and tries per round of the speed
    protocol (:func:`moorelab.measure.speed.measure_interleaved`); ``batched_decode_tokens`` the
    new tokens per sequence of the batched-decode curve.

    :data:`FULL` keeps `moorelab run` on the embedded default under 5 minutes on 2 cores: 10,000
    characters (~3,000 SmolLM2 tokens, each scored once in 512-token windows, stride 256), 512-token
    prefill, 32 decode steps per round.
    """

    max_chars: int
    window: int
    stride: int
    prefill_tokens: int
    decode_tokens: int
    batch_size: int
    calibration_tokens: int
    speed_rounds: int = 5
    speed_max_tries: int = 3
    batched_decode_tokens: int = 16


FULL = Budget(max_chars=10_000, window=512, stride=256, prefill_tokens=512, decode_tokens=32, batch_size=4,
              calibration_tokens=4096)
QUICK = Budget(max_chars=3_000, window=256, stride=128, prefill_tokens=128, decode_tokens=16, batch_size=4,
               calibration_tokens=1024, batched_decode_tokens=8)


#: the float32 linear layers' kernels (:class:`moorelab.model.transformer.FastLinear`): a compiled
#: GEMV for decode-sized calls, torch's matmul for prefill
FP32_KERNEL = "moorelab fp32 GEMV; torch matmul (prefill)"


def kernel_label(model: torch.nn.Module) -> str:
    """The matmul kernels of a model's linear layers, for its row: each quantized module's
    ``kernel`` name (decode) and, when it differs, its ``prefill_kernel`` marked "(prefill)", and
    :data:`FP32_KERNEL` when float32 linear layers remain (the same label for a float32 baseline
    in `moorelab run` and in `moorelab improve`)."""
    names = sorted({m.kernel for m in model.modules() if getattr(m, "kernel", None)})
    names += sorted({f"{m.prefill_kernel} (prefill)" for m in model.modules()
                     if getattr(m, "kernel", None) and getattr(m, "prefill_kernel", m.kernel) != m.kernel})
    if any(isinstance(m, torch.nn.Linear) and not getattr(m, "kernel", None) for m in model.modules()):
        names.append(FP32_KERNEL)
    return ", ".join(names) or FP32_KERNEL


def check_task_fits(loaded, token_ids: list[int], budget: "Budget", text: Text) -> None:
    """Refuse, before any measurement, a model or text the task cannot use.

    Raises:
        ModelLoadError: the model is not a decoder (perplexity and decoding need a causal LM).
        DataError: the text has fewer tokens than the prefill test needs (named file, counts).
    """
    from moorelab.errors import DataError, ModelLoadError

    if not loaded.config.is_decoder:
        raise ModelLoadError(f"model {loaded.name}: a {loaded.config.family} encoder has no next-token "
                             "distribution; run and improve measure causal language models")
    need = max(budget.prefill_tokens, 64)
    if len(token_ids) < need:
        raise DataError(f"{text.source}: {len(token_ids)} tokens after tokenization, the task needs at least {need}")


def document_start_token(loaded) -> int | None:
    """The token put once before the text so that its first token is scored too.

    GPT-2-style byte-level BPE vocabularies (SmolLM2's included) separate pretraining documents
    with ``<|endoftext|>``: that token is used when present (as lm-eval's rolling log-likelihood
    does with the end-of-text token); otherwise the model's BOS, then its EOS.
    """
    tid = loaded.tokenizer.token_to_id("<|endoftext|>")
    if tid is not None:
        return tid
    return loaded.bos_token_id if loaded.bos_token_id is not None else loaded.eos_token_id


def measure_model(
    name: str,
    technique: str,
    kernel: str,
    model: torch.nn.Module,
    token_ids: list[int],
    text: Text,
    budget: Budget,
    bos_token_id: int | None,
    progress,
    notes: str = "",
    held_bytes: int = 0,
) -> tuple[dict, dict]:
    """Measure one model variant's quality and resources on the task (speed: :func:`measure_speed_rows`).

    Peak RSS is taken over one untimed prefill and short decode of this variant (its weights and
    its working memory); ``held_bytes`` of other models the process holds at that moment (the
    variants kept resident for the interleaved speed protocol) are subtracted.

    Args:
        name: row name.
        technique: "none" for the baseline, else the technique applied.
        kernel: the matmul kernel the row ran ("; fused decode" or "; Python decode" is appended:
            the decode path this variant takes).
        model: a moorelab Transformer (eval mode).
        token_ids: tokenized ``text``.
        text: the scored text (its UTF-8 byte count is the bits-per-byte denominator).
        budget: window/stride and speed-test lengths.
        bos_token_id: document-start token for the "first" BOS policy.
        progress: rich progress display.
        notes: free text for the row.
        held_bytes: bytes of weights of other models resident during the measurement.

    Returns:
        (results row, details dict with the quality result).
    """
    from moorelab.model import decode
    from moorelab.model.transformer import KVCache
    from moorelab.model.fused_decode import prepare_decode

    task = progress.add_task(f"{name}: bits per byte", total=len(token_ids))
    quality = score_text(
        lambda ids: model(ids),
        token_ids,
        text.n_bytes,
        window=budget.window,
        stride=budget.stride,
        bos_policy="first",
        bos_token_id=bos_token_id,
        batch_size=budget.batch_size,
        progress=lambda n: progress.advance(task, n),
        # a window longer than the model's positions is capped (and the row says so)
        context=getattr(getattr(model, "config", None), "max_position_embeddings", None),
        n_chars=len(text.text),
    )
    # peak RSS over one prefill + decode of this variant only; the scoring above holds
    # batch x window x vocab logits, which would dominate every row
    prepare_decode(model)  # the one-off packing of the decode weights is not this variant's peak
    gc.collect()
    rss_reset = resources.reset_peak_rss()
    prompt = torch.tensor([token_ids[: max(budget.prefill_tokens, DECODE_PROMPT_TOKENS)]], dtype=torch.long)
    with torch.inference_mode():
        model(prompt[:, : budget.prefill_tokens])
        cache = KVCache()
        logits = decode.forward(model, prompt[:, :DECODE_PROMPT_TOKENS], cache=cache)
        for _ in range(min(4, budget.decode_tokens)):
            logits = decode.forward(model, decode.greedy(logits[:, -1])[:, None], cache=cache)
    peak = resources.peak_rss_bytes() - held_bytes
    path = getattr(model, "last_decode_path", None)
    if path == "fused":
        kernel += "; fused decode"
    elif path == "python":
        kernel += "; Python decode"
    values = {
        "bits_per_byte": quality.bits_per_byte,
        "bits_per_character": quality.bits_per_character,
        "perplexity": quality.perplexity,
        "peak_rss_bytes": peak,
        "parameters": resources.count_parameters(model),
        "weight_bytes": resources.weight_bytes(model),
    }
    row = make_row(name, technique, kernel, values, notes)
    row["quality_protocol"] = {k: v for k, v in quality.to_dict().items()
                              if k not in ("perplexity", "bits_per_byte", "bits_per_character")}
    scope = ("process peak RSS during one untimed prefill and 4-token decode of this variant (scoring excluded)"
             if rss_reset else "process peak RSS since start (reset unsupported)")
    if held_bytes:
        scope += f", minus {held_bytes:,} bytes of weights of the other variants held for the speed protocol"
    row["peak_rss_scope"] = scope
    return row, {"quality": quality}


def measure_speed_rows(
    rows: list[dict],
    models: list[torch.nn.Module],
    token_ids: list[int],
    budget: Budget,
    usd_per_hour: float,
    progress=None,
) -> InterleavedResult:
    """Time every row's model with the interleaved protocol and write its speed and cost into the row.

    Every model is resident; ``rows[0]`` is the baseline of the ratios. Each model runs its
    prefill as ``model(ids)`` and decodes through :func:`moorelab.model.decode.forward` (the
    fused float32 path when eligible, as every row of every job). Per row this sets the metrics
    ``prefill_tokens_per_s``, ``decode_tokens_per_s``, ``decode_latency_p50/p90/p99_ms``,
    ``usd_per_million_tokens_decode`` (from the decode figure) and ``cpu_share``, each from
    undisturbed rounds only (one figure, one place); ``speed_protocol`` (settings, rounds kept,
    re-measurements, every try with its CPU shares); ``speed_disturbed``; and, for every row
    after the first, the speed entries of ``vs_baseline`` (paired ratios with intervals,
    :func:`moorelab.measure.speed.paired_ratio`; the cost ratio is the decode ratio inverted;
    :func:`moorelab.report.results.add_ratios` adds the other metrics' ratios beside them).

    Args:
        rows: rows from :func:`measure_model`, in the order of ``models``.
        models: the variants (moorelab Transformers, eval mode).
        token_ids: the task's tokens (the prompts are their start).
        budget: prefill/decode lengths, rounds and tries.
        usd_per_hour: machine price for $/1M tokens.
        progress: rich progress display (optional).

    Returns:
        The :class:`~moorelab.measure.speed.InterleavedResult`.
    """
    from moorelab.model import decode
    from moorelab.model.fused_decode import steady
    from moorelab.model.transformer import KVCache

    if len(rows) != len(models):
        raise ValueError(f"measure_speed_rows: {len(rows)} rows but {len(models)} models")
    prompt = torch.tensor([token_ids[: max(budget.prefill_tokens, DECODE_PROMPT_TOKENS)]], dtype=torch.long)
    # prefill as generation runs it: the last position's logits only (see moorelab.measure.speed)
    # decode steps in a steady block, as generate runs them (moorelab.model.fused_decode.steady)
    variants = [SpeedVariant(r["name"], lambda ids, m=m: m(ids, last_only=True),
                             lambda ids, cache, m=m: decode.forward(m, ids, cache=cache), KVCache,
                             steady=lambda m=m: steady(m))
                for r, m in zip(rows, models)]
    task = None
    if progress is not None:
        task = progress.add_task("speed: prefill + decode, variants interleaved", total=budget.speed_rounds * len(rows))

    def tick(_name, rec):
        if progress is not None:
            if rec["kept"] or rec["try"] == budget.speed_max_tries:
                progress.advance(task, 1)

    res = measure_interleaved(variants, prompt, prefill_tokens=budget.prefill_tokens, decode_tokens=budget.decode_tokens,
                              rounds=budget.speed_rounds, max_tries=budget.speed_max_tries, on_measurement=tick)
    if progress is not None:
        progress.update(task, completed=budget.speed_rounds * len(rows))
    for r, vs in zip(rows, res.variants):
        values = {**{k: v["value"] for k, v in r["metrics"].items()},
                  "prefill_tokens_per_s": vs.prefill_tokens_per_s,
                  "decode_tokens_per_s": vs.decode_tokens_per_s,
                  "decode_latency_p50_ms": vs.decode_latency_p50_ms,
                  "decode_latency_p90_ms": vs.decode_latency_p90_ms,
                  "decode_latency_p99_ms": vs.decode_latency_p99_ms,
                  "usd_per_million_tokens_decode": resources.usd_per_million_tokens(vs.decode_tokens_per_s, usd_per_hour),
                  "cpu_share": vs.cpu_share}
        r["metrics"] = {k: metric(k, values[k]) for k in METRICS if k in values}
        r["speed_protocol"] = {
            **res.settings,
            "prefill_logits": "last position only, as generation needs them (llama-bench and transformers' generate do the same)",
            "figures_are": (f"medians of {vs.rounds_kept} undisturbed rounds (latency: percentiles of their pooled steps)"
                            if vs.figures_from == "undisturbed rounds" else "medians of every try: every measurement was disturbed"),
            "rounds_kept": vs.rounds_kept, "measurements": vs.measurements, "remeasured": vs.remeasured,
            "disturbed_measurements": vs.disturbed_measurements, "disturbed": vs.disturbed,
            "tries": vs.tries,
        }
        r["speed_disturbed"] = vs.disturbed
        if r is not rows[0]:
            ratios = dict(res.ratios[vs.name])
            ratios["usd_per_million_tokens_decode"] = invert_ratio(ratios["decode_tokens_per_s"])
            r["vs_baseline"] = {k: {**q, "unit": "x baseline", "method": "median of per-round paired ratios, order-statistic interval"}
                                for k, q in ratios.items()}
    return res
