"""Dynamic int8 quantization: :class:`Int8DynamicConfig` -> :class:`Int8DynamicLinear`.

int8 weights per output channel as in :mod:`.int8`, and the activations quantized at run time,
symmetric int8 with one scale per token (row of ``x``): ``sx = max|x| / 127`` (LLM.int8()/
SmoothQuant-style "per-token" dynamic quantization, without outlier decomposition); int8 x int8
products summed exactly in int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moorelab.improve.quantize.base import QuantizedLinear, _check_kernel, _check_threshold, _dequant_threads, _resolve_lib
from moorelab.improve.quantize.int8 import quantize_int8_per_channel


@dataclass(frozen=True)
class Int8DynamicConfig:
    """int8 weights per output channel and int8 activations quantized per token at run time.

    Args:
        kernel, m_threshold: as in :class:`Int8WeightOnlyConfig`; above ``m_threshold`` rows the
            same per-token quantization is applied and the int8 values are multiplied with a
            float32 matmul (exact for integer products, float32 accumulation).
    """

    kernel: str = "auto"
    m_threshold: int = 8

    def __post_init__(self):
        _check_kernel(self.kernel)
        _check_threshold(self.m_threshold)

    @property
    def name(self) -> str:
        return "int8-dynamic"


def quantize_activations_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per-token quantization of ``x [M, K]`` -> (int8 ``[M, K]``, float32 ``[M]``).

    ``sx = max|x[m]| / 127`` (1 for an all-zero row); ``xq = round_half_even(x / sx)``; matches
    the C kernel bit for bit.
    """
    sx = x.abs().amax(dim=1) / 127.0
    sx = torch.where(sx > 0, sx, torch.ones_like(sx))  # all-zero row, or amax/127 underflowing to 0
    xq = torch.round(x / sx[:, None]).clamp_(-127, 127)
    return xq.to(torch.int8), sx


class Int8DynamicLinear(QuantizedLinear):
    """nn.Linear replacement: int8 per-channel weights x int8 per-token activations.

    Buffers: ``qweight`` int8 ``[out, in]``, ``scale`` float32 ``[out]``.
    """

    scheme = "int8-dynamic"
    _fn_name = "a8w8_linear"
    _decode_kind = "int8-dynamic"

    def _decode_tensors(self) -> tuple:
        return self.qweight, self.scale, None, self.bias

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 kernel: str = "auto", m_threshold: int = 8, name: str = "?"):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, m_threshold)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self._lib = _resolve_lib(kernel, name)
        self._fn = self._lib.a8w8_linear if self._lib is not None else None
        if self._lib is not None:
            self.kernel = "moorelab-avx2 int8xint8 dynamic"
            self.prefill_kernel = "per-token int8 + moorelab-avx2 dequant + fp32 matmul"
        else:
            self.kernel = self.prefill_kernel = self._fallback_name

    @property
    def _fallback_name(self) -> str:
        return "torch per-token int8 + fp32 matmul"

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto", m_threshold: int = 8, name: str = "?"):
        """Quantize an ``nn.Linear`` into this module."""
        q, s = quantize_int8_per_channel(linear.weight, f"{name}.weight")
        return cls(q, s, linear.bias, kernel=kernel, m_threshold=m_threshold, name=name)

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def _torch_forward(self, x2):
        xq, sx = quantize_activations_per_token(x2)
        if x2.requires_grad:  # straight-through: keep a gradient path for x
            xq_f = x2 / sx[:, None] + (xq.float() - x2 / sx[:, None]).detach()
        else:
            xq_f = xq.float()
        y = (xq_f @ self.qweight.float().t()) * (sx[:, None] * self.scale[None, :])
        return y + self.bias if self.bias is not None else y

    def _kernel_ptrs(self) -> tuple:
        return (self.qweight.data_ptr(), self.scale.data_ptr(), self._ptr(self.bias))

    def _kernel_forward(self, x2, y):
        m = x2.shape[0]
        qw, sc, b = self._ptrs or self._refresh_ptrs()
        rc = self._fn(x2.data_ptr(), m, self.in_features, qw, sc, b, y.data_ptr(), self.out_features,
                      self._threads(m), None)
        if rc != 0:
            raise MemoryError("int8 dynamic kernel: workspace allocation failed")

    def _prefill_forward(self, x2):
        xq, sx = quantize_activations_per_token(x2)
        k = self.in_features

        def dq(n0, n1, buf):
            self._lib.w8_dequant(self.qweight[n0].data_ptr(), self.scale[n0].data_ptr(), buf.data_ptr(),
                                 n1 - n0, k, _dequant_threads(n1 - n0, k))

        bias, self.bias = self.bias, None
        try:
            y = self._dequant_chunks(xq.float(), dq)
        finally:
            self.bias = bias
        y *= sx[:, None]
        return y + self.bias if self.bias is not None else y
