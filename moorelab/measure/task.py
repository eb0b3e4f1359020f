"""The task every model variant is measured on, the same way: quality, speed, resources, cost.

A row is produced by :func:`measure_model`; the format is described in
:mod:`moorelab.measure.row`.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from moorelab.measure import resources
from moorelab.measure.quality import score_text
from moorelab.measure.row import make_row
from moorelab.measure.speed import measure_speed
from moorelab.measure.text import Text


@dataclass
class Budget:
    """How much work a run does (characters of text, window sizes, speed-test lengths)."""

    max_chars: int
    window: int
    stride: int
    prefill_tokens: int
    decode_tokens: int
    batch_size: int
    calibration_tokens: int


FULL = Budget(max_chars=20_000, window=512, stride=256, prefill_tokens=512, decode_tokens=64, batch_size=4,
              calibration_tokens=4096)
QUICK = Budget(max_chars=3_000, window=256, stride=128, prefill_tokens=128, decode_tokens=16, batch_size=4,
               calibration_tokens=1024)


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
    usd_per_hour: float,
    progress,
    notes: str = "",
) -> tuple[dict, dict]:
    """Measure one model variant on the task: quality, speed, resources, cost.

    Args:
        name: row name.
        technique: "none" for the baseline, else the technique applied.
        kernel: the matmul kernel the row ran ("; fused decode" or "; Python decode" is appended:
            the decode path the speed test took).
        model: a moorelab Transformer (eval mode).
        token_ids: tokenized ``text``.
        text: the scored text (its UTF-8 byte count is the bits-per-byte denominator).
        budget: window/stride and speed-test lengths.
        bos_token_id: document-start token for the "first" BOS policy.
        usd_per_hour: machine price for $/1M tokens.
        progress: rich progress display.
        notes: free text for the row.

    Returns:
        (results row, details dict with the quality protocol and speed protocol).
    """
    from moorelab.model import decode
    from moorelab.model.transformer import KVCache

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
    )
    # peak RSS is taken over the speed test only (model + prefill/decode working memory); the
    # scoring above holds batch x window x vocab logits, which would dominate every row
    gc.collect()
    rss_reset = resources.reset_peak_rss()
    stask = progress.add_task(f"{name}: prefill/decode speed", total=1)
    prompt = torch.tensor([token_ids[: max(budget.prefill_tokens, 64)]], dtype=torch.long)
    speed = measure_speed(
        lambda ids: model(ids),
        lambda ids, cache: decode.forward(model, ids, cache=cache),
        lambda: KVCache(),
        prompt,
        prefill_tokens=budget.prefill_tokens,
        decode_tokens=budget.decode_tokens,
    )
    progress.advance(stask, 1)
    path = getattr(model, "last_decode_path", None)
    if path == "fused":
        kernel += "; fused decode"
    elif path == "python":
        kernel += "; Python decode"
    values = {
        "bits_per_byte": quality.bits_per_byte,
        "perplexity": quality.perplexity,
        "prefill_tokens_per_s": speed.prefill_tokens_per_s,
        "decode_tokens_per_s": speed.decode_tokens_per_s,
        "decode_latency_p50_ms": speed.decode_latency_p50_ms,
        "decode_latency_p90_ms": speed.decode_latency_p90_ms,
        "decode_latency_p99_ms": speed.decode_latency_p99_ms,
        "peak_rss_bytes": resources.peak_rss_bytes(),
        "parameters": resources.count_parameters(model),
        "weight_bytes": resources.weight_bytes(model),
        "usd_per_million_tokens_decode": resources.usd_per_million_tokens(speed.decode_tokens_per_s, usd_per_hour),
        "decode_cpu_share": speed.decode_cpu_share,
    }
    row = make_row(name, technique, kernel, values, notes)
    row["quality_protocol"] = {k: v for k, v in quality.to_dict().items() if k not in ("perplexity", "bits_per_byte")}
    row["speed_protocol"] = speed.to_dict()
    row["peak_rss_scope"] = "process peak RSS during this row's prefill/decode speed test (scoring excluded)" if rss_reset else "process lifetime (reset unsupported)"
    return row, {"quality": quality, "speed": speed}


