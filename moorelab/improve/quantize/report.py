"""What :func:`~moorelab.improve.quantize.quantize_` reports: per-layer SQNR and bytes
(:class:`LayerQuantReport`, :class:`QuantizeReport`), and the two measures behind them,
:func:`sqnr_db` and :func:`weight_bytes`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


def sqnr_db(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(‖W‖² / ‖W − Ŵ‖²)`` in dB (float64 sums).

    Returns ``inf`` when Ŵ equals W exactly.
    """
    w = weight.detach().float().reshape(-1)
    a = approx.detach().float().reshape(-1)
    err = sig = 0.0
    step = 1 << 20  # float64 sums of float32 blocks (no full float64 copy of a 28M-element lm_head)
    for i in range(0, w.numel(), step):
        wb, ab = w[i : i + step], a[i : i + step]
        err += (wb - ab).square().sum(dtype=torch.float64).item()
        sig += wb.square().sum(dtype=torch.float64).item()
    if err == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def _storage_key(t: torch.Tensor):
    try:
        st = t.untyped_storage()
        return st.data_ptr(), st.nbytes()
    except (RuntimeError, NotImplementedError):
        return id(t), t.numel() * t.element_size()


def weight_bytes(model: nn.Module) -> int:
    """Real storage bytes of all parameters and buffers of ``model``.

    Each underlying storage is counted once (tied weights, views), so a tied embedding/lm_head
    counts once and quantized buffers count at their packed size (int4: half a byte per value
    plus float16 scales and mins).

    Returns:
        bytes (int).
    """
    seen: dict[int, int] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        ptr, nbytes = _storage_key(t)
        seen[ptr] = max(seen.get(ptr, 0), nbytes)
    return int(sum(seen.values()))


@dataclass
class LayerQuantReport:
    """One quantized layer: ``name`` (module path), shape, kernels, SQNR (dB), bytes before/after.

    ``bytes_before`` counts the float weight (+bias) this layer multiplied by (for a tied
    lm_head that storage stays, held by the embedding); ``bytes_after`` counts the new buffers.
    """

    name: str
    in_features: int
    out_features: int
    scheme: str
    kernel: str
    prefill_kernel: str
    sqnr_db: float
    bytes_before: int
    bytes_after: int
    tied: bool = False


@dataclass
class QuantizeReport:
    """Result of :func:`quantize_`: per-layer rows and whole-model storage.

    Attributes:
        config: config name (e.g. "int4-weight-only-g32").
        layers: one :class:`LayerQuantReport` per replaced module, in module order.
        model_bytes_before / model_bytes_after: :func:`weight_bytes` of the whole model before and
            after (a tied lm_head adds its quantized copy while the float embedding stays).
        kernel_status: whether the compiled kernels are in use, or why not.
        notes: plain-language remarks (tied weights etc.).
    """

    config: str
    layers: list[LayerQuantReport] = field(default_factory=list)
    model_bytes_before: int = 0
    model_bytes_after: int = 0
    kernel_status: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def min_sqnr_db(self) -> float:
        return min((r.sqnr_db for r in self.layers), default=math.inf)

    @property
    def mean_sqnr_db(self) -> float:
        vals = [r.sqnr_db for r in self.layers if math.isfinite(r.sqnr_db)]
        return sum(vals) / len(vals) if vals else math.inf

    def to_dict(self) -> dict:
        """JSON-ready dict (infinite SQNR becomes the string "inf")."""
        d = asdict(self)
        for r in d["layers"]:
            if not math.isfinite(r["sqnr_db"]):
                r["sqnr_db"] = str(r["sqnr_db"])
        d["min_sqnr_db"] = self.min_sqnr_db if math.isfinite(self.min_sqnr_db) else str(self.min_sqnr_db)
        return d

    def table(self) -> str:
        """Plain-text table, one row per layer."""
        lines = [f"quantization {self.config}: {len(self.layers)} layers; kernels: {self.kernel_status}"]
        lines.append(f"{'layer':40s} {'shape':>12s} {'SQNR dB':>8s} {'bytes before':>13s} {'bytes after':>12s}  kernel")
        for r in self.layers:
            shape = f"{r.out_features}x{r.in_features}"
            lines.append(
                f"{r.name + (' (tied)' if r.tied else ''):40s} {shape:>12s} {r.sqnr_db:8.2f} {r.bytes_before:13,d} "
                f"{r.bytes_after:12,d}  {r.kernel}"
            )
        lines.append(
            f"model weight bytes {self.model_bytes_before:,d} -> {self.model_bytes_after:,d} "
            f"({self.model_bytes_after / max(1, self.model_bytes_before):.3f}x)"
        )
        lines.extend(self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
