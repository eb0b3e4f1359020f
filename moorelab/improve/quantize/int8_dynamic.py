"""Dynamic int8 quantization: :class:`Int8DynamicConfig` -> :class:`Int8DynamicLinear`.

int8 weights per output channel as in :mod:`.int8` (the module machinery for them is shared:
:class:`~moorelab.improve.quantize.int8.PerChannelInt8Linear`), and the activations quantized
at run time, symmetric int8 with one scale per token (row of ``x``): ``sx = max|x| / 127``
(LLM.int8()/SmoothQuant-style "per-token" dynamic quantization, without outlier
decomposition); int8 x int8 products summed exactly in int32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moorelab.improve.quantize.base import _check_kernel, _check_threshold
from moorelab.improve.quantize.int8 import PerChannelInt8Linear


@dataclass(frozen=True)
class Int8DynamicConfig:
    """int8 weights per output channel and int8 activations quantized per token at run time.

    Args:
        kernel, m_threshold: as in :class:`Int8WeightOnlyConfig`; above ``m_threshold`` rows the
            integer GEMM ``ml_w8_gemm`` runs with the same per-token int8 rounding (results equal
            to the decode kernel's bit for bit).
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


class Int8DynamicLinear(PerChannelInt8Linear):
    """nn.Linear replacement: int8 per-channel weights x int8 per-token activations.

    Buffers: ``qweight`` int8 ``[out, in]``, ``scale`` float32 ``[out]``.
    """

    scheme = "int8-dynamic"
    config_type = Int8DynamicConfig
    _fn_name = "a8w8_linear"
    _decode_kind = "int8-dynamic"
    _kernel_names = ("moorelab-avx2 int8xint8 dynamic", "moorelab-avx2 int8 GEMM x int8-act rows")
    _gemm_act_bits = 8

    @property
    def _fallback_name(self) -> str:
        return "torch per-token int8 + fp32 matmul"

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

    def _kernel_forward(self, x2, y):
        m = x2.shape[0]
        qw, sc, b = self._ptrs or self._refresh_ptrs()
        rc = self._fn(x2.data_ptr(), m, self.in_features, qw, sc, b, y.data_ptr(), self.out_features,
                      self._threads(m), None)
        if rc != 0:
            raise MemoryError("int8 dynamic kernel: workspace allocation failed")

    def _prefill_forward(self, x2):
        # the same per-token rounding and exact integer sums as the decode kernel: equal bit for bit
        return self._gemm_forward(x2)
