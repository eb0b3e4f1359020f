"""Dynamic int8 quantization: :class:`Int8DynamicConfig` -> :class:`Int8DynamicLinear`.

int8 weights per output channel as in :mod:`.int8` (the module machinery for them is shared:
:class:`~moorelab.improve.quantize.int8.PerChannelInt8Linear`), and the activations quantized
at run time, symmetric int8 with one scale per token (row of ``x``): ``sx = max|x| / 127``
(LLM.int8()/SmoothQuant-style "per-token" dynamic quantization, without outlier
decomposition); int8 x int8 products summed exactly in int32.

With ``activation_block=32`` (:class:`Int8DynamicBlockLinear`) the activations get one scale per
32 consecutive values of a token instead, as GGML's ``Q8_0`` rounds them for its int8 dot
products (llama.cpp ``ggml_vec_dot_q8_0_q8_0``): an outlier coarsens only its own block, so the
quality stays near int8 weight-only while decode runs on integer dot products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moorelab.errors import MoorelabError
from moorelab.improve.quantize.base import _check_kernel, _check_threshold
from moorelab.improve.quantize.int8 import PerChannelInt8Linear


@dataclass(frozen=True)
class Int8DynamicConfig:
    """int8 weights per output channel and int8 activations quantized at run time, per token (default)
    or per 32-block (``activation_block=32``).

    Args:
        kernel, m_threshold: as in :class:`Int8WeightOnlyConfig`; above ``m_threshold`` rows the
            integer GEMM ``ml_w8_gemm`` runs with the same per-token int8 rounding (results equal
            to the decode kernel's bit for bit). With ``activation_block=32`` the prefill rounds x
            per block the same way, then runs that GEMM with int16 rows on the rounded values:
            within the int16 step of the decode kernel's numbers, not bit for bit.
        activation_block: ``None`` (default): one activation scale per token. ``32``: one per 32
            consecutive values of a token (:class:`Int8DynamicBlockLinear`, GGML ``Q8_0``'s
            activation blocks); other sizes raise :class:`~moorelab.errors.MoorelabError`.
    """

    kernel: str = "auto"
    m_threshold: int = 8
    activation_block: int | None = None

    def __post_init__(self):
        _check_kernel(self.kernel)
        _check_threshold(self.m_threshold)
        if self.activation_block not in (None, 32):
            raise MoorelabError(f"Int8DynamicConfig: activation_block must be None (one scale per token) or 32 "
                                f"(one per 32 values, GGML Q8_0's block; the compiled kernel's only block size), "
                                f"got {self.activation_block!r}")

    @property
    def name(self) -> str:
        return "int8-dynamic" if self.activation_block is None else f"int8-dynamic-b{self.activation_block}"


def quantize_activations_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per-token quantization of ``x [M, K]`` -> (int8 ``[M, K]``, float32 ``[M]``).

    ``sx = max|x[m]| / 127`` (1 for an all-zero row; NaN, with ``xq = 0``, for a row holding a NaN
    or an infinity, so its outputs are NaN); ``xq = round_half_even(x / sx)``; matches the C
    kernel bit for bit.
    """
    sx = x.abs().amax(dim=1) / 127.0
    finite = torch.isfinite(sx)  # a row holding a NaN or an infinity: sx NaN, xq 0 (its outputs become NaN)
    sx = torch.where(finite, torch.where(sx > 0, sx, torch.ones_like(sx)), torch.full_like(sx, float("nan")))
    xq = torch.round(x / sx[:, None]).clamp_(-127, 127)
    xq = torch.where(finite[:, None], xq, torch.zeros_like(xq))
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

    @classmethod
    def from_config(cls, config: Int8DynamicConfig, linear, name: str) -> "Int8DynamicLinear":
        """Quantize ``linear`` (module path ``name``): an :class:`Int8DynamicBlockLinear` when
        ``config.activation_block`` is 32, else this class."""
        target = Int8DynamicBlockLinear if config.activation_block else Int8DynamicLinear
        return target.from_linear(linear, config.kernel, config.m_threshold, name)


def quantize_activations_per_block(x: torch.Tensor, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of ``x [M, K]`` with one scale per ``block`` consecutive values
    of a row (the last block of a row may be shorter), GGML ``Q8_0``'s activation rounding.

    Returns:
        ``(xq, bs)``: int8 ``[M, K]`` and float32 ``[M, ceil(K / block)]`` with
        ``bs = max|x_block| / 127`` (1 for an all-zero block or one whose maximum underflows) and
        ``xq = round_half_even(x / bs)``: the C kernel's rounding (``a8b_quant_row``) bit for bit.
        A block holding a NaN or an infinity gets ``bs = NaN`` and ``xq = 0``, so the outputs it
        reaches are NaN (as with float activations), in the kernel too.
    """
    m, k = x.shape
    nb = -(-k // block)
    xp = torch.nn.functional.pad(x.float(), (0, nb * block - k)).view(m, nb, block)
    bs = xp.abs().amax(dim=2) / 127.0
    finite = torch.isfinite(bs)  # a block holding a NaN or an infinity: bs NaN, xq 0 (its outputs become NaN)
    bs = torch.where(finite, torch.where(bs > 0, bs, torch.ones_like(bs)), torch.full_like(bs, float("nan")))
    xq = torch.round(xp / bs[:, :, None]).clamp_(-127, 127)
    xq = torch.where(finite[:, :, None], xq, torch.zeros_like(xq)).view(m, nb * block)[:, :k]
    return xq.to(torch.int8).contiguous(), bs


class Int8DynamicBlockLinear(Int8DynamicLinear):
    """nn.Linear replacement: int8 per-channel weights x int8 activations rounded per 32-block
    (:func:`quantize_activations_per_block`), summed exactly per block in int32 and scaled per
    block in float32 (``ml_a8bw8_linear``, ``moorelab/kernels/csrc/int8_dynamic.c``).

    Prefill (more than ``m_threshold`` rows) rounds x the same way, then runs the int8 GEMM
    ``ml_w8_gemm`` on the rounded values with int16 row rounding: within 1/32767 of a row's largest
    value of the decode kernel's numbers (the int16 step), not bit for bit.

    Buffers: ``qweight`` int8 ``[out, in]``, ``scale`` float32 ``[out]``.
    """

    scheme = "int8-dynamic-b32"
    _fn_name = "a8bw8_linear"
    _decode_kind = "int8-dynamic-b32"
    _kernel_names = ("moorelab-avx2 int8xint8 dynamic per-32-block", "moorelab-avx2 int8 GEMM x int16-act rows "
                     "(x rounded per 32-block first)")
    _gemm_act_bits = 16

    @property
    def _fallback_name(self) -> str:
        return "torch per-32-block int8 + fp32 matmul"

    def _rounded(self, x2: torch.Tensor) -> torch.Tensor:
        """x2 ``[M, in]`` rounded per 32-block, as float32 (``xq * bs``); straight-through gradient."""
        xq, bs = quantize_activations_per_block(x2)
        scales = bs.repeat_interleave(32, dim=1)[:, : x2.shape[1]]
        xr = xq.float() * scales
        if x2.requires_grad:
            xr = x2 + (xr - x2).detach()
        return xr

    def _torch_forward(self, x2):
        y = (self._rounded(x2) @ self.qweight.float().t()) * self.scale[None, :]
        return y + self.bias if self.bias is not None else y

    def _kernel_forward(self, x2, y):
        m = x2.shape[0]
        qw, sc, b = self._ptrs or self._refresh_ptrs()
        rc = self._fn(x2.data_ptr(), m, self.in_features, qw, sc, b, y.data_ptr(), self.out_features,
                      self._threads(m))
        if rc != 0:
            raise MemoryError("int8 dynamic per-block kernel: workspace allocation failed")

    def _prefill_forward(self, x2):
        # x2 rounded per 32-block by the C loop (a NaN block stays NaN, and the GEMM's row rounding
        # then makes the row's outputs NaN)
        xr = torch.empty_like(x2)
        self._lib.a8b_round(x2.data_ptr(), x2.shape[0], self.in_features, xr.data_ptr(), self._threads(x2.shape[0]))
        return self._gemm_forward(xr)
