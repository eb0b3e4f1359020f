"""int4 weight-only quantization: :class:`Int4WeightOnlyConfig` -> :class:`Int4WeightOnlyLinear`.

Asymmetric int4, one (scale, min) pair per group of ``group_size`` consecutive input features
of a row (GGML Q4_1 / torchao "float zero-point" style): ``scale = (max - min) / 15``,
``q = round((W - min) / scale)`` in 0..15, ``Ŵ = scale * q + min``; scale and min stored as
float16. Packing: two values per byte, ``packed[n, j] = q[n, 2j] | (q[n, 2j+1] << 4)``, i.e. the
LOW nibble holds the EVEN input index, values unsigned 0..15 (no sign bit). Optionally the
activations are rounded per 32-block to 16 or 8 bits before the integer dot products
(``activation_bits``, llama.cpp's Q8 activation blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moorelab.errors import MoorelabError
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
class Int4WeightOnlyConfig:
    """int4 weights, asymmetric, one float16 (scale, min) pair per group of input features.

    Args:
        group_size: input features per group; a multiple of 32 (32 or 64 are the usual
            choices) that divides every quantized layer's ``in_features``.
        kernel, m_threshold: as in :class:`Int8WeightOnlyConfig`.
        activation_bits: 32 (default) multiplies the int4 weights by the float32 activations
            (pure weight-only). 16 or 8 round each 32-block of x to that many bits with its own
            scale (``max|x_block| / (2^(bits-1) - 1)``) before the integer dot products, as
            llama.cpp does for its Q4 formats (Q8 activation blocks): int8 uses one
            ``vpmaddubsw`` per 32 weights and is the fast decode kernel here (576->1536 at
            M=1: 0.021 ms vs 0.028 ms with float activations, ``benchmarks/bench_quant_kernels.py``
            part 1); int16 uses
            ``vpmaddwd``. The prefill path and the pure-torch fallback apply the same rounding,
            so bits per byte measured on prefill reflect it; the min (zero-point) term uses the
            rounded x too, so the layer computes exactly Ŵ·x̂. With int8 activations and groups
            of 32 the prefill is an integer GEMM as well (``ml_w4a8_gemm``: the decode GEMV's
            numbers bit for bit, no float32 copy of the weights); other layouts dequantize to
            float32 and run torch's matmul.

    Raises:
        MoorelabError: group_size not a positive multiple of 32.
    """

    group_size: int = 32
    kernel: str = "auto"
    m_threshold: int = 8
    activation_bits: int = 32

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size <= 0 or self.group_size % 32:
            raise MoorelabError(
                f"Int4WeightOnlyConfig.group_size={self.group_size!r}: expected a positive multiple of 32 (e.g. 32 or 64)"
            )
        if type(self.activation_bits) is not int or self.activation_bits not in (8, 16, 32):
            raise MoorelabError(
                f"Int4WeightOnlyConfig.activation_bits={self.activation_bits!r}: expected 32 (float), 16 or 8"
            )
        _check_kernel(self.kernel)
        _check_threshold(self.m_threshold)

    @property
    def name(self) -> str:
        suffix = "" if self.activation_bits == 32 else f"-a{self.activation_bits}"
        return f"int4-weight-only-g{self.group_size}{suffix}"


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack unsigned 4-bit values two per byte: LOW nibble = even index, HIGH nibble = odd index.

    Args:
        q: integer tensor ``[N, K]`` with values 0..15, K even.

    Returns:
        uint8 ``[N, K/2]`` with ``packed[n, j] = q[n, 2j] | (q[n, 2j+1] << 4)``.

    Raises:
        MoorelabError: odd K or values outside 0..15.
    """
    if q.shape[-1] % 2:
        raise MoorelabError(f"pack_int4: last dimension {q.shape[-1]} is odd; int4 packing needs pairs")
    if q.numel() and (int(q.min()) < 0 or int(q.max()) > 15):
        raise MoorelabError("pack_int4: values must be unsigned 0..15")
    q = q.to(torch.uint8)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``[N, K/2]`` -> uint8 ``[N, K]`` values 0..15."""
    lo = packed & 0x0F
    hi = packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize_int4_groupwise(
    weight: torch.Tensor, group_size: int, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 quantization with one (scale, min) pair per group of input features.

    Follows GGML's Q4_1 rule: per group ``min``, ``scale = (max - min) / 15`` (both rounded to
    float16 first, so the stored values are the ones used), ``q = round((W - min) / scale)``
    clamped to 0..15; a constant group gets scale 1 and q = 0.

    Args:
        weight: float tensor ``[N, K]``.
        group_size: consecutive input features per group; must divide K.
        name: tensor name used in error messages.

    Returns:
        ``(packed, scales, mins)``: uint8 ``[N, K/2]`` (see :func:`pack_int4`), float16
        ``[N, K/group_size]`` twice; ``Ŵ[n, k] = scales[n, k//G] * q[n, k] + mins[n, k//G]``.

    Raises:
        MoorelabError: group_size does not divide K, weight not finite, or a group's range
            overflows float16.
    """
    w = _float_weight(weight, name)
    n, k = w.shape
    if group_size <= 0 or k % group_size:
        raise MoorelabError(
            f"tensor {name}: group_size {group_size} does not divide in_features {k} (weight shape [{n}, {k}])"
        )
    g = w.reshape(n, k // group_size, group_size)
    wmin = g.amin(dim=2)
    wmax = g.amax(dim=2)
    _check_finite(wmax - wmin, name)
    mins = wmin.to(torch.float16)
    scale32 = (wmax - mins.float()) / 15.0
    scale32 = torch.where(scale32 > 0, scale32, torch.ones_like(scale32))
    scales = scale32.to(torch.float16)
    # a scale that rounds to 0 in float16 (range < ~1e-7) would divide by zero: use the
    # smallest normal float16 instead; very small ranges lose precision (stated limitation).
    scales = torch.where(scales > 0, scales, torch.full_like(scales, 6.103515625e-05))
    if not (torch.isfinite(scales).all() and torch.isfinite(mins).all()):
        raise MoorelabError(f"tensor {name}: group range exceeds float16 (|w| > 65504); cannot store int4 scales")
    q = torch.round((g - mins.float()[..., None]) / scales.float()[..., None]).clamp_(0, 15)
    q = q.reshape(n, k).to(torch.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()  # pack_int4 without re-checking 0..15
    return packed, scales.contiguous(), mins.contiguous()


def dequantize_int4(packed: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int) -> torch.Tensor:
    """Float32 ``[N, K]`` weight from :func:`quantize_int4_groupwise` outputs (pure torch)."""
    q = unpack_int4(packed).float()
    n, k = q.shape
    g = q.reshape(n, k // group_size, group_size)
    w = g * scales.float()[..., None] + mins.float()[..., None]
    return w.reshape(n, k)


def round_activations_blocks(x: torch.Tensor, bits: int) -> torch.Tensor:
    """What the int4 "a16"/"a8" kernels multiply the weight nibbles by.

    Args:
        x: float32 ``[M, K]`` with ``K % 32 == 0``.
        bits: 16 or 8; each 32-block is rounded (half to even) to steps of
            ``max|x_block| / (2^(bits-1) - 1)`` (step 1 for an all-zero block).

    Returns:
        float32 ``[M, K]``: the rounded values times their block step (GGML Q8-style blocks).
    """
    qmax = float((1 << (bits - 1)) - 1)
    m, k = x.shape
    b = x.reshape(m, k // 32, 32)
    s = b.abs().amax(dim=2, keepdim=True) / qmax
    s = torch.where(s > 0, s, torch.ones_like(s))  # all-zero block, or amax so small that amax/qmax underflows
    return (torch.round(b / s).clamp_(-qmax, qmax) * s).reshape(m, k)


class Int4WeightOnlyLinear(QuantizedLinear):
    """nn.Linear replacement with group-wise asymmetric int4 weights (see module docstring).

    Buffers: ``qweight`` uint8 ``[out, in/2]`` (low nibble = even input index), ``scales`` and
    ``mins`` float16 ``[out, in/group_size]``.
    """

    scheme = "int4-weight-only"
    config_type = Int4WeightOnlyConfig
    _fn_name = "w4_linear"

    @property
    def _decode_kind(self) -> str:
        return {32: "int4", 16: "int4-a16", 8: "int4-a8"}[self.activation_bits]

    def _decode_tensors(self) -> tuple:
        return self.qweight, self.scales, self.mins, self.bias

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None, kernel: str = "auto", m_threshold: int = 8, name: str = "?",
                 activation_bits: int = 32):
        super().__init__(qweight.shape[1] * 2, qweight.shape[0], bias, m_threshold)
        if type(activation_bits) is not int or activation_bits not in (8, 16, 32):
            raise MoorelabError(f"layer {name}: activation_bits={activation_bits!r}: expected 32, 16 or 8")
        self.group_size = group_size
        self.activation_bits = activation_bits
        self._fn_name = {32: "w4_linear", 16: "w4a16_linear", 8: "w4a8_linear"}[activation_bits]
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scales", scales.to(torch.float16).contiguous())
        self.register_buffer("mins", mins.to(torch.float16).contiguous())
        self._lib = _resolve_lib(kernel, name)
        self._fn = getattr(self._lib, self._fn_name) if self._lib is not None else None
        act = self._act_suffix
        if self._lib is not None:
            self.kernel = f"moorelab-avx2-gemv int4-g{group_size}{act}"
            if self._integer_prefill:
                self.prefill_kernel = f"moorelab-avx2-gemm int4-g{group_size}{act} (vpmaddubsw, integer)"
            else:
                self.prefill_kernel = f"moorelab-avx2 dequant int4-g{group_size} + fp32 matmul{act}"
        else:
            self.kernel = self.prefill_kernel = self._fallback_name

    @property
    def _integer_prefill(self) -> bool:
        """Prefill (more than ``m_threshold`` rows) through ``ml_w4a8_gemm``: int8 activation
        blocks and groups of 32 (GGML Q4_1 x Q8_1), the GEMV's numbers bit for bit; other
        layouts dequantize to float32 and run torch's matmul on the rounded activations."""
        return self.__dict__.get("activation_bits", 32) == 8 and self.group_size == 32

    @property
    def _act_suffix(self) -> str:
        bits = self.__dict__.get("activation_bits", 32)
        return "" if bits == 32 else f" x int{bits}-act"

    @property
    def _fallback_name(self) -> str:
        return "torch dequant+matmul" + self._act_suffix

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = 32, kernel: str = "auto", m_threshold: int = 8,
                    name: str = "?", activation_bits: int = 32):
        """Quantize an ``nn.Linear`` into this module; MoorelabError if group_size does not divide in."""
        packed, scales, mins = quantize_int4_groupwise(linear.weight, group_size, f"{name}.weight")
        return cls(packed, scales, mins, group_size, linear.bias, kernel=kernel, m_threshold=m_threshold, name=name,
                   activation_bits=activation_bits)

    @classmethod
    def from_config(cls, config: Int4WeightOnlyConfig, linear: nn.Linear, name: str) -> Int4WeightOnlyLinear:
        """Quantize ``linear`` (module path ``name``) with every field of ``config``."""
        return cls.from_linear(linear, config.group_size, config.kernel, config.m_threshold, name,
                               config.activation_bits)

    def _with_rounded_activations(self, x2: torch.Tensor, matmul: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``matmul(x)`` = x·Ŵᵀ(+b) evaluated as the a16/a8 kernels do: on x rounded per 32-block
        (:func:`round_activations_blocks`), the min term ``Σ_g min[n,g]·Σ_{k∈g} x̂[k]`` included,
        so the layer is exactly Ŵ·x̂ (GGML's Q8_1 block sum ``s`` does the same). The min term on
        the float x instead weights the rounding error by ``scale·q`` (0..15 steps) rather than by
        the weight (about −8..7 steps): on SmolLM2 int4 g32 a8 that cost +1.3% perplexity
        (43.14 against 42.60 under llama-perplexity's rule, ``-c 512``, 20,000 characters of *Macbeth*,
        where llama.cpp gives 42.57 for the same Q4_1 weights: ``python benchmarks/bench_vs_llamacpp.py``)."""
        if self.activation_bits == 32:
            return matmul(x2)
        return matmul(round_activations_blocks(x2, self.activation_bits))

    def _torch_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return self._with_rounded_activations(x2, lambda xx: F.linear(xx, self.dequantize(), self.bias))

    def dequantize(self) -> torch.Tensor:
        if self._lib is None:
            return dequantize_int4(self.qweight, self.scales, self.mins, self.group_size)
        n, k = self.out_features, self.in_features
        out = torch.empty(n, k)
        self._lib.w4_dequant(self.qweight.data_ptr(), self.scales.data_ptr(), self.mins.data_ptr(), self.group_size,
                             out.data_ptr(), n, k, _dequant_threads(n, k))
        return out

    def _kernel_ptrs(self) -> tuple:
        return (self.qweight.data_ptr(), self.scales.data_ptr(), self.mins.data_ptr(), self._ptr(self.bias))

    def _kernel_forward(self, x2, y):
        m = x2.shape[0]
        qw, sc, mn, b = self._ptrs or self._refresh_ptrs()
        rc = self._fn(x2.data_ptr(), m, self.in_features, qw, sc, mn, self.group_size, b, y.data_ptr(),
                      self.out_features, self._threads(m))
        if rc != 0:
            raise MemoryError("int4 kernel: workspace allocation failed")

    def _prefill_forward(self, x2):
        k, g = self.in_features, self.group_size
        if self._integer_prefill:
            m = x2.shape[0]
            y = torch.empty(m, self.out_features, dtype=torch.float32)
            qw, sc, mn, b = self._ptrs or self._refresh_ptrs()
            rc = self._lib.w4a8_gemm(x2.data_ptr(), m, k, qw, sc, mn, g, b, y.data_ptr(), self.out_features,
                                     self._threads(m))
            if rc == -1:
                raise MemoryError("int4 GEMM: workspace allocation failed")
            if rc != 0:
                raise RuntimeError(f"int4 GEMM: C side returned {rc} (group size {g}, in_features {k})")
            return y
        return self._dequant_prefill(x2)

    def _dequant_prefill(self, x2):
        """Prefill by dequantizing blocks of rows to float32 and torch's matmul (on the rounded
        activations): every layout but int8 activations with groups of 32, and the A/B reference
        of ``ml_w4a8_gemm`` in ``benchmarks/bench_decode_depth.py``."""
        k, g = self.in_features, self.group_size

        def dq(n0, n1, buf):
            self._lib.w4_dequant(self.qweight[n0].data_ptr(), self.scales[n0].data_ptr(), self.mins[n0].data_ptr(),
                                 g, buf.data_ptr(), n1 - n0, k, _dequant_threads(n1 - n0, k))

        return self._with_rounded_activations(x2, lambda xx: self._dequant_chunks(xx, dq))
