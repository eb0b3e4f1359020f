"""The results format: every figure with its unit, plus the environment it was measured in.

Rows (one model variant measured on the task, :mod:`moorelab.measure.row`) are compared here:
ratios to the baseline (speed ratios paired by round, with an interval and a verdict) and gains
per dollar, credited only at equal quality and only when measurable.

Files are written into a staging folder and moved into the output folder only when the whole
run succeeded, so a failed run leaves no half-written files behind.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch


#: no ratio: a property of the measurement, not of the variant
NO_RATIO_METRICS = ("cpu_share",)


def add_ratios(rows: list[dict], baseline: dict) -> None:
    """Complete ``vs_baseline`` of each row but the baseline: ``{metric: {"value": ratio, ...}}``.

    Speed and cost ratios are already there, from the paired rounds of
    :func:`~moorelab.measure.task.measure_speed_rows` (median of the per-round ratios, ``ci``,
    ``confidence``, ``pairs``, ``verdict``: "higher", "lower", "no measurable difference" when
    the interval contains 1, or "not claimed: ..." with value None for a disturbed row), and are
    kept. Other metrics (bits per byte, bytes, parameters, peak RSS) get the plain ratio of the
    two figures (``"method": "ratio of the two figures"``); every entry has ``"unit": "x baseline"``.
    A ratio > 1 means "more" (faster for tokens/s, larger for bytes);
    :data:`moorelab.measure.row.METRICS` says which direction is better.
    """
    base = baseline["metrics"]
    for row in rows:
        if row is baseline:
            continue
        ratios = dict(row.get("vs_baseline", {}))
        for k, m in row["metrics"].items():
            if k in NO_RATIO_METRICS or k in ratios:
                continue
            b = base.get(k, {}).get("value")
            if b and m["value"] is not None and not (isinstance(b, float) and math.isnan(b)):
                ratios[k] = {"value": m["value"] / b, "unit": "x baseline", "method": "ratio of the two figures"}
        row["vs_baseline"] = {k: ratios[k] for k in row["metrics"] if k in ratios}


def environment() -> dict:
    """Where the figures were measured: software versions, CPU model, threads."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import transformers

        tf_version = transformers.__version__
    except Exception:  # pragma: no cover - transformers is a dependency
        tf_version = None
    from moorelab.version import __version__

    return {
        "moorelab_version": __version__,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "transformers_version": tf_version,
        "platform": platform.platform(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _clean(obj):
    """Replace NaN/inf by None so that the JSON is strict."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: dict) -> None:
    """Write strict JSON (NaN/inf → null), indented."""
    path.write_text(json.dumps(_clean(data), indent=2, default=_json_default) + "\n", encoding="utf-8")


@contextmanager
def staged_output(out: Path) -> Iterator[Path]:
    """A staging folder whose files move into ``out`` only if the block succeeds.

    Args:
        out: the final output folder (created if missing; existing files of the same name are
            replaced, others are left alone).

    Yields:
        Path of the staging folder (beside ``out``, same file system).

    On any exception the staging folder is removed and ``out`` is untouched.
    """
    from moorelab.errors import MoorelabError

    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise MoorelabError(f"--out {out}: exists and is not a folder")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=parent))
    except OSError as exc:
        raise MoorelabError(f"--out {out}: cannot write there ({exc.strerror})") from None
    try:
        yield stage
    except BaseException:
        with _signals_deferred():  # a second Ctrl-C must not leave the staging folder behind
            shutil.rmtree(stage, ignore_errors=True)
        raise
    with _signals_deferred():  # the move into ``out`` finishes before a Ctrl-C takes effect
        try:
            out.mkdir(parents=True, exist_ok=True)
            for item in stage.iterdir():
                target = out / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(item, target)
        except OSError as exc:
            raise MoorelabError(f"--out {out}: cannot write there ({exc.strerror})") from None
        finally:
            shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM during a short step that must not stop half-way, then deliver
    them (the handler that was in place runs, so Ctrl-C still stops the command after it).
    Python runs signal handlers in the main thread only; elsewhere this does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in held[:1]:
            previous[sig](sig, None)


#: default quality tolerance for crediting a gain: Δ bits per byte at most this (see add_cost_gain)
DEFAULT_MAX_DELTA_BITS_PER_BYTE = 0.01


def add_cost_gain(rows: list[dict], baseline: dict, max_delta_bits_per_byte: float = DEFAULT_MAX_DELTA_BITS_PER_BYTE) -> None:
    """Add ``performance_per_cost`` to every non-baseline row: tokens per $ against the baseline,
    credited as a gain (and in months of the reference trends) only at equal quality.

    The tokens-per-$ factor is the paired decode-speed ratio of the row (same machine, same
    price: tokens per $ scale as decode tokens/s), with its interval. It is *credited* only when
    all hold: the row's bits per byte rose by at most ``max_delta_bits_per_byte`` over the
    baseline's (quality held), the speed was measured undisturbed (ratio claimed) and the
    interval excludes 1 (a measurable difference). Only a credited factor is put in months of the
    reference trends (:func:`moorelab.law.months.months_of_reference`, each with the
    ``moorelab trend months`` command that reproduces it); a credited factor < 1 is a loss at
    equal quality (negative months). Otherwise ``verdict`` says why nothing is credited:
    "no gain at equal quality: ...", "no measurable difference in tokens per $" or
    "not claimed: ...".

    Default tolerance, 0.01 bits/byte: under 0.6% of SmolLM2's ~1.73 bits/byte on the default
    text (token perplexity ×1.016 at most). int8 weight-only changes bits per byte by ~+0.003 and
    passes; int4 g32 with int8 activations (~+0.036, perplexity ×1.09) and FFN pruning (+0.26,
    ×1.97) are quality traded for speed, not the same model made cheaper, and are not credited.

    Raises:
        ValueError: a negative tolerance.
    """
    from moorelab.law.months import months_of_reference

    if not max_delta_bits_per_byte >= 0:
        raise ValueError(f"max_delta_bits_per_byte must be ≥ 0, got {max_delta_bits_per_byte}")
    b = baseline["metrics"]
    for row in rows:
        if row is baseline:
            continue
        m = row["metrics"]
        delta = m["bits_per_byte"]["value"] - b["bits_per_byte"]["value"]
        held = delta <= max_delta_bits_per_byte
        sr = row.get("vs_baseline", {}).get("decode_tokens_per_s")
        if sr is None or "ci" not in sr:  # no paired rounds: the plain ratio of the two cost figures, never credited
            gain = {"value": b["usd_per_million_tokens_decode"]["value"] / m["usd_per_million_tokens_decode"]["value"],
                    "ci": None, "confidence": None, "verdict": "not claimed: no paired speed rounds"}
        else:
            gain = {k: sr[k] for k in ("value", "ci", "confidence", "verdict")}
        credited = False
        if not held:
            verdict = (f"no gain at equal quality: bits per byte {delta:+.4f} exceeds the "
                       f"+{max_delta_bits_per_byte:g} allowed")
        elif gain["value"] is None or gain["verdict"].startswith("not claimed"):
            verdict = gain["verdict"]
        elif gain["verdict"] == "no measurable difference":
            verdict = "no measurable difference in tokens per $"
        else:
            credited = True
            verdict = "gain at equal quality" if gain["value"] > 1 else "loss at equal quality"
        row["performance_per_cost"] = {
            "gain_vs_baseline": {**gain, "unit": "x tokens per $ (decode)"},
            "delta_bits_per_byte": {"value": delta, "unit": "bits/byte"},
            "quality_rule": {"max_delta_bits_per_byte": max_delta_bits_per_byte, "held": held,
                             "why": "a gain is credited only at equal quality: bits per byte may rise by at most "
                                    "this much over the baseline (--max-delta-bits-per-byte)"},
            "credited": credited,
            "verdict": verdict,
            "months_of_trend": months_of_reference(gain["value"]) if credited else None,
        }
