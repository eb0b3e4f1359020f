"""int8 weight-only quantization: :class:`Int8WeightOnlyConfig` -> :class:`Int8WeightOnlyLinear`.

Symmetric int8 weights with one float32 scale per OUTPUT channel (row of ``W[out, in]``):
``s[n] = max_k |W[n,k]| / 127``, ``q = round(W / s)`` in -127..127. An outlier in one output
channel only coarsens that channel. Activations stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moorelab.improve.quantize.base import (
    QuantizedLinear,
    _check_finite,
    _check_kernel,
    _check_threshold,
    _dequant_threads,
    _float_weight,
    _resolve_lib,
)


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """int8 weights, one float32 scale per output channel; activations float32 in decode, rounded
    to int16 per row in prefill (see ``m_threshold``; on SmolLM2 the bits per byte of the default
    text equal the float32-activation figure to 5 decimals, 1.66180 against 1.66179,
    ``benchmarks/bench_decode_depth.py``).

    Args:
        kernel: "auto" (compiled AVX2 kernel if it builds, else torch), "moorelab" (require the
            compiled kernel; MoorelabError if unavailable) or "torch" (pure torch).
        m_threshold: calls with at most this many rows (tokens) use the GEMV kernel (float32
            activations); more rows (prefill) use the integer GEMM ``ml_w8_gemm``
            (``moorelab/kernels/csrc/int8_gemm.c``), which rounds each row of x to int16 (one
            scale per row, relative step 1/32767 of the row's maximum) and sums the int8 x int16
            products exactly (AVX2 ``vpmaddwd``): 1.1-1.3x torch's float32 matmul per CPU-second
            on SmolLM2's layer shapes here, with no float32 copy of the weights. Default 8.
    """

    kernel: str = "auto"
    m_threshold: int = 8

    def __post_init__(self):
        _check_kernel(self.kernel)
        _check_threshold(self.m_threshold)

    @property
    def name(self) -> str:
        return "int8-weight-only"


def quantize_int8_per_channel(weight: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization with one scale per output channel (row).

    Args:
        weight: float tensor ``[N, K]`` (out_features, in_features).
        name: tensor name used in error messages.

    Returns:
        ``(q, scale)``: int8 ``[N, K]`` in -127..127 and float32 ``[N]`` with
        ``Ŵ[n, k] = scale[n] * q[n, k]``; an all-zero row gets scale 1.

    Raises:
        MoorelabError: non-2-D or non-finite weight.
    """
    w = _float_weight(weight, name)
    amax = w.abs().amax(dim=1)
    _check_finite(amax, name)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def round_activations_rows(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What the int8 prefill GEMM (``ml_w8_gemm``) multiplies the int8 weights by.

    Args:
        x: float32 ``[M, K]``.
        bits: 16 (int8 weight-only prefill) or 8 (dynamic int8); each row is rounded (half to
            even) to steps of ``max|x_row| / (2^(bits-1) - 1)`` (step 1 for an all-zero row).

    Returns:
        float32 ``[M, K]``: the rounded values times their row step. With 16 bits the relative
        step is 1/32767 of the row's largest value (below float16's 1/2048).
    """
    qmax = float((1 << (bits - 1)) - 1)
    s = x.abs().amax(dim=1, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x / s).clamp_(-qmax, qmax) * s


class PerChannelInt8Linear(QuantizedLinear):
    """What the int8-weight modules share (:class:`Int8WeightOnlyLinear` and
    :class:`~moorelab.improve.quantize.int8_dynamic.Int8DynamicLinear`): the weights of
    :func:`quantize_int8_per_channel` and the compiled kernels' access to them.

    Buffers: ``qweight`` int8 ``[out, in]``, ``scale`` float32 ``[out]``. Subclasses name their
    compiled kernels in ``_kernel_names`` (decode, prefill) and their GEMV in ``_fn_name``.
    """

    _kernel_names = ("?", "?")

    def _decode_tensors(self) -> tuple:
        return self.qweight, self.scale, None, self.bias

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 kernel: str = "auto", m_threshold: int = 8, name: str = "?"):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, m_threshold)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self._lib = _resolve_lib(kernel, name)
        self._fn = getattr(self._lib, self._fn_name) if self._lib is not None else None
        if self._lib is not None:
            self.kernel, self.prefill_kernel = self._kernel_names
            if self._lib.w8_gemm_isa(-1) == 1:  # the GEMM's AVX512-VNNI tile is in force (ml_w8_gemm_isa)
                self.prefill_kernel = self.prefill_kernel.replace("moorelab-avx2 int8 GEMM",
                                                                  "moorelab-avx512vnni int8 GEMM (4x4 vpdpwssd tile)")
        else:
            self.kernel = self.prefill_kernel = self._fallback_name

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto", m_threshold: int = 8, name: str = "?"):
        """Quantize an ``nn.Linear`` (weight ``[out, in]``) into this module."""
        q, s = quantize_int8_per_channel(linear.weight, f"{name}.weight")
        return cls(q, s, linear.bias, kernel=kernel, m_threshold=m_threshold, name=name)

    @classmethod
    def from_config(cls, config, linear: nn.Linear, name: str) -> "PerChannelInt8Linear":
        """Quantize ``linear`` (module path ``name``) with ``config.kernel`` and ``config.m_threshold``."""
        return cls.from_linear(linear, config.kernel, config.m_threshold, name)

    def _kernel_ptrs(self) -> tuple:
        return (self.qweight.data_ptr(), self.scale.data_ptr(), self._ptr(self.bias))

    #: activation bits of the prefill GEMM (``ml_w8_gemm``): each row of x rounded to this many bits
    _gemm_act_bits = 16

    def _gemm_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """Prefill (``M > m_threshold`` rows) through the compiled integer GEMM ``ml_w8_gemm``:
        each row of ``x2`` [M, in] rounded to ``_gemm_act_bits`` bits (one scale per row, see
        :func:`round_activations_rows`), int8 x int16 products summed exactly in integers
        (AVX2 ``vpmaddwd``), scales applied per row and per output channel; returns [M, out]."""
        m = x2.shape[0]
        y = torch.empty(m, self.out_features, dtype=torch.float32)
        qw, sc, b = self._ptrs or self._refresh_ptrs()
        rc = self._lib.w8_gemm(x2.data_ptr(), m, self.in_features, qw, sc, b, y.data_ptr(), self.out_features,
                               self._threads(m), self._gemm_act_bits)
        if rc != 0:
            raise MemoryError(f"int8 GEMM kernel: returned {rc} (workspace allocation failed)")
        return y

    def _dequant_rows(self, n0: int, n1: int, buf: torch.Tensor) -> None:
        """Compiled dequantization of output rows ``n0:n1`` into ``buf`` (float32 ``[n1-n0, in]``)."""
        k = self.in_features
        self._lib.w8_dequant(self.qweight[n0].data_ptr(), self.scale[n0].data_ptr(), buf.data_ptr(),
                             n1 - n0, k, _dequant_threads(n1 - n0, k))


class Int8WeightOnlyLinear(PerChannelInt8Linear):
    """nn.Linear replacement with int8 per-output-channel weights (see module docstring).

    Buffers: ``qweight`` int8 ``[out, in]``, ``scale`` float32 ``[out]``.
    """

    scheme = "int8-weight-only"
    config_type = Int8WeightOnlyConfig
    _fn_name = "w8_linear"
    _decode_kind = "int8"
    _kernel_names = ("moorelab-avx2-gemv int8", "moorelab-avx2 int8 GEMM x int16-act rows")

    def dequantize(self) -> torch.Tensor:
        if self._lib is None:
            return self.qweight.float() * self.scale[:, None]
        out = torch.empty(self.out_features, self.in_features)
        self._lib.w8_dequant(self.qweight.data_ptr(), self.scale.data_ptr(), out.data_ptr(), self.out_features,
                             self.in_features, _dequant_threads(self.out_features, self.in_features))
        return out

    def _kernel_forward(self, x2, y):
        m = x2.shape[0]
        qw, sc, b = self._ptrs or self._refresh_ptrs()
        self._fn(x2.data_ptr(), m, self.in_features, qw, sc, b, y.data_ptr(), self.out_features, self._threads(m))

    def _prefill_forward(self, x2):
        return self._gemm_forward(x2)
