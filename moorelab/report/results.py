"""The results format: every figure with its unit, plus the environment it was measured in.

Rows (one model variant measured on the task, :mod:`moorelab.measure.row`) are compared here:
ratios to the baseline, gains per dollar, and flags on rows decoded under CPU contention.

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


def add_ratios(rows: list[dict], baseline: dict) -> None:
    """Add ``vs_baseline`` to each row: value / baseline value for every shared metric.

    A ratio > 1 means "more" (faster for tokens/s, larger for bytes); the row's metric units say
    which direction is better (see :data:`moorelab.measure.row.METRICS`).
    """
    base = baseline["metrics"]
    for row in rows:
        ratios = {}
        for k, m in row["metrics"].items():
            b = base.get(k, {}).get("value")
            if b and m["value"] is not None and not (isinstance(b, float) and math.isnan(b)):
                ratios[k] = m["value"] / b
        row["vs_baseline"] = ratios


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
        shutil.rmtree(stage, ignore_errors=True)
        raise
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


def add_cost_gain(rows: list[dict], baseline: dict) -> None:
    """Add ``performance_per_cost`` to every non-baseline row.

    The gain is the baseline's decode cost divided by the row's (both in $/1M tokens on the same
    machine at the same price), i.e. how many times more tokens the same money buys; it is stated
    beside the change in bits per byte, since a gain bought with quality is not the same gain.
    Where the gain differs from 1 it is also expressed as months of the reference trends
    (:func:`moorelab.law.months.months_of_reference`).
    """
    from moorelab.law.months import months_of_reference

    b = baseline["metrics"]
    for row in rows:
        if row is baseline:
            continue
        m = row["metrics"]
        gain = b["usd_per_million_tokens_decode"]["value"] / m["usd_per_million_tokens_decode"]["value"]
        row["performance_per_cost"] = {
            "gain_vs_baseline": {"value": gain, "unit": "x tokens per $ (decode)"},
            "delta_bits_per_byte": {"value": m["bits_per_byte"]["value"] - b["bits_per_byte"]["value"], "unit": "bits/byte"},
            "months_of_trend": months_of_reference(gain) if abs(gain - 1.0) > 1e-9 else None,
        }


def flag_disturbed(rows: list[dict]) -> None:
    """Set ``speed_disturbed`` on each row: its decode got less than :data:`CPU_SHARE_WARN` of its
    threads' CPU time (another process was running), so its speed figures are not comparable."""
    for r in rows:
        share = r["metrics"].get("decode_cpu_share", {}).get("value")
        r["speed_disturbed"] = share is not None and share < CPU_SHARE_WARN


#: rows whose decode got less than this share of their threads' CPU time are flagged; measured
#: here: ~0.99 undisturbed, 0.95 with a competitor busy 10% of the time (decode -7%), 0.89 at 25%
#: (-14%), 0.67 with one core fully taken (-53%)
CPU_SHARE_WARN = 0.9
