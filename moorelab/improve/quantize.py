"""Weight-only and dynamic quantization of ``nn.Linear`` layers (torchao-style API).

Three schemes, each replacing ``nn.Linear`` modules in place:

* :class:`Int8WeightOnlyConfig` -> :class:`Int8WeightOnlyLinear`: symmetric int8 weights with one
  float32 scale per OUTPUT channel (row of ``W[out, in]``): ``s[n] = max_k |W[n,k]| / 127``,
  ``q = round(W / s)`` in -127..127. An outlier in one output channel only coarsens that channel.
* :class:`Int4WeightOnlyConfig` -> :class:`Int4WeightOnlyLinear`: asymmetric int4, one
  (scale, min) pair per group of ``group_size`` consecutive input features of a row (GGML
  Q4_1 / torchao "float zero-point" style): ``scale = (max - min) / 15``,
  ``q = round((W - min) / scale)`` in 0..15, ``Ŵ = scale * q + min``; scale and min stored as
  float16. Packing: two values per byte, ``packed[n, j] = q[n, 2j] | (q[n, 2j+1] << 4)``, i.e.
  the LOW nibble holds the EVEN input index, values unsigned 0..15 (no sign bit).
* :class:`Int8DynamicConfig` -> :class:`Int8DynamicLinear`: int8 weights as above, and the
  activations quantized at run time, symmetric int8 with one scale per token (row of ``x``):
  ``sx = max|x| / 127`` (LLM.int8()/SmoothQuant-style "per-token" dynamic quantization,
  without outlier decomposition); int8 x int8 products summed exactly in int32.

Kernels: decode (few rows ``M``) runs moorelab's AVX2 GEMV kernels
(:mod:`moorelab.improve.kernels`), which read 4x (int8) or ~6.4x (int4, g32) fewer weight
bytes than float32; many rows (prefill) dequantize the weight to float32 with a C loop and run
torch's float32 matmul. Without gcc/AVX2 a pure-torch path runs. Every quantized module names
its kernels in ``kernel`` (decode, ``M <= m_threshold``), ``prefill_kernel`` and
``last_kernel`` (the one the latest call used).

Tied embeddings: when ``lm_head.weight is embed.weight`` (SmolLM2), the lm_head gets its own
quantized copy and the embedding table stays float32 (a row lookup reads only d_model floats
per token, so quantizing it would save storage, not decode time). The report marks such rows
``tied=True``.

The quantized modules are for inference: when autograd needs a gradient through ``x``, the
pure-torch path runs so gradients still flow (the quantized weights are constants).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moorelab.errors import MoorelabError
from moorelab import kernels as _kernels

__all__ = [
    "Int8WeightOnlyConfig",
    "Int4WeightOnlyConfig",
    "Int8DynamicConfig",
    "QuantizedLinear",
    "Int8WeightOnlyLinear",
    "Int4WeightOnlyLinear",
    "Int8DynamicLinear",
    "LayerQuantReport",
    "QuantizeReport",
    "quantize_",
    "weight_bytes",
    "sqnr_db",
    "quantize_int8_per_channel",
    "quantize_int4_groupwise",
    "pack_int4",
    "unpack_int4",
    "dequantize_int4",
]

_KERNEL_CHOICES = ("auto", "moorelab", "torch")


# --------------------------------------------------------------------------- configs


def _check_kernel(kernel: str) -> None:
    if kernel not in _KERNEL_CHOICES:
        raise MoorelabError(f"kernel={kernel!r}: expected one of {', '.join(_KERNEL_CHOICES)}")


def _check_threshold(m_threshold: int) -> None:
    if not isinstance(m_threshold, int) or m_threshold < 0:
        raise MoorelabError(f"m_threshold={m_threshold!r}: expected an integer >= 0")


@dataclass(frozen=True)
class Int8WeightOnlyConfig:
    """int8 weights, one float32 scale per output channel; activations stay float32.

    Args:
        kernel: "auto" (compiled AVX2 kernel if it builds, else torch), "moorelab" (require the
            compiled kernel; MoorelabError if unavailable) or "torch" (pure torch).
        m_threshold: calls with at most this many rows (tokens) use the GEMV kernel (which
            re-converts the weights for every row); more rows dequantize to float32 (C loop) and
            use torch's matmul. Default 8: by cost counts on this machine the GEMV of a 576x1536
            layer takes ~30 µs per row single-threaded (weights in cache) while dequantize +
            matmul takes ~0.25 ms, so they cross near M = 8.
    """

    kernel: str = "auto"
    m_threshold: int = 8

    def __post_init__(self):
        _check_kernel(self.kernel)
        _check_threshold(self.m_threshold)

    @property
    def name(self) -> str:
        return "int8-weight-only"


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
            so bits per byte measured on prefill reflect it. The min (zero-point) term always
            uses the float32 x.

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


# --------------------------------------------------------------------------- quantizers


def _float_weight(weight: torch.Tensor, name: str) -> torch.Tensor:
    w = weight.detach().to(torch.float32)
    if w.dim() != 2:
        raise MoorelabError(f"tensor {name}: expected a 2-D weight [out, in], got shape {list(w.shape)}")
    return w.contiguous()


def _check_finite(stat: torch.Tensor, name: str) -> None:
    # per-row/group max and min propagate NaN and inf: checking them is enough (and cheap)
    if not torch.isfinite(stat).all():
        raise MoorelabError(f"tensor {name}: weight has NaN or inf values; cannot quantize")


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


def quantize_activations_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per-token quantization of ``x [M, K]`` -> (int8 ``[M, K]``, float32 ``[M]``).

    ``sx = max|x[m]| / 127`` (1 for an all-zero row); ``xq = round_half_even(x / sx)``; matches
    the C kernel bit for bit.
    """
    sx = x.abs().amax(dim=1) / 127.0
    sx = torch.where(sx > 0, sx, torch.ones_like(sx))  # all-zero row, or amax/127 underflowing to 0
    xq = torch.round(x / sx[:, None]).clamp_(-127, 127)
    return xq.to(torch.int8), sx


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


# --------------------------------------------------------------------------- modules


def _resolve_lib(kernel: str, name: str):
    if kernel == "torch":
        return None
    lib = _kernels.get_library()
    if lib is None and kernel == "moorelab":
        raise MoorelabError(f"layer {name}: kernel='moorelab' requested but unavailable ({_kernels.status()})")
    return lib


def _num_threads() -> int:
    return max(1, torch.get_num_threads())


# Calls touching fewer than this many weight elements (M*N*K for matmuls, N*K for dequant)
# run on one thread: below ~256K weights an OpenMP fork/join costs about what it saves. On an
# idle machine the block layers of SmolLM2 (331K-885K weights) gain from the second core's
# memory bandwidth; on a shared, oversubscribed machine every parallel region (ours and torch's)
# can stall for a scheduler time slice waiting for its second thread, so the environment
# variable MOORELAB_QUANT_PARALLEL_MIN (weights) can raise the bar (e.g. 4194304: only lm_head).
_SINGLE_THREAD_WEIGHTS = int(os.environ.get("MOORELAB_QUANT_PARALLEL_MIN", str(1 << 18)))
# Inside the fused decode (moorelab.model.fused_decode) there is no Python between the calls and
# the threads are still spinning from the previous layer, so a second thread pays off sooner:
# measured here (SmolLM2 int4-a8 decode after a 512-token prompt, median of 3 rounds), running the
# 576x576 and 576x192 layers on two threads took decode from 233 to 240 tok/s (int8: 204 -> 214).
# MOORELAB_QUANT_PARALLEL_MIN, when set, is the bar for both paths.
_FUSED_SINGLE_THREAD_WEIGHTS = int(os.environ.get("MOORELAB_QUANT_PARALLEL_MIN", str(1 << 16)))


def _dequant_threads(n: int, k: int) -> int:
    return 1 if n * k < _SINGLE_THREAD_WEIGHTS else _num_threads()


class QuantizedLinear(nn.Module):
    """Base class of the quantized replacements of ``nn.Linear`` (``forward(x[..., in]) -> [..., out]``).

    Attributes:
        in_features, out_features: as nn.Linear.
        bias: float32 Parameter ``[out]`` or None.
        kernel: name of the kernel used for decode-sized calls (``M <= m_threshold`` rows).
        prefill_kernel: name of the kernel used above ``m_threshold`` rows.
        last_kernel: kernel used by the latest forward call (None before the first).
    """

    scheme: str = "?"

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, m_threshold: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.m_threshold = m_threshold
        if bias is not None:
            self.bias = nn.Parameter(bias.detach().to(torch.float32).clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._lib = None
        self.kernel = "?"
        self.prefill_kernel = "?"
        self.last_kernel: str | None = None
        self.tied_to: str | None = None  # set by quantize_ for a tied lm_head copy
        self._ptrs: tuple | None = None  # cached data pointers of the buffers (see _refresh_ptrs)

    # Raw data pointers are cached (nn.Module attribute lookups of buffers cost ~1 µs each, as
    # much as a small GEMV); any replacement of a buffer or .to()/_apply drops the cache.
    def _kernel_ptrs(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def _refresh_ptrs(self) -> tuple:
        ptrs = self._kernel_ptrs()
        self.__dict__["_ptrs"] = ptrs
        return ptrs

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in ("qweight", "scale", "scales", "mins", "bias"):
            self.__dict__["_ptrs"] = None

    def _apply(self, fn, *args, **kwargs):
        self.__dict__["_ptrs"] = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__["_ptrs"] = None
        return super()._load_from_state_dict(*args, **kwargs)

    # ctypes handles cannot be copied: copy.deepcopy / pickling store "kernel wanted" and the
    # copy looks the (process-wide, cached) library up again.
    _fn_name = ""

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_lib"] = state.get("_lib") is not None
        state["_fn"] = None
        state["_ptrs"] = None
        return state

    def __setstate__(self, state):
        want = bool(state.pop("_lib", False))
        super().__setstate__(state)
        lib = _kernels.get_library() if want else None
        self.__dict__["_lib"] = lib
        self.__dict__["_fn"] = getattr(lib, self._fn_name) if lib is not None else None
        if want and lib is None:
            self.__dict__["kernel"] = self.__dict__["prefill_kernel"] = self._fallback_name

    _decode_kind = ""

    def decode_descriptor(self) -> tuple | None:
        """This layer as a C ``ml_lin`` for :mod:`moorelab.model.fused_decode`:
        ``(kind, threads, N, K, G, w, s, mn, bias, tensors to keep alive)``, or ``None`` when the
        compiled kernel is not loaded or ``m_threshold`` is 0 (decode calls would not use it)."""
        if self._lib is None or self.m_threshold < 1 or not self._decode_kind:
            return None
        qw, s, mn, b = self._decode_tensors()
        keep = [t for t in (qw, s, mn, b) if t is not None]
        threads = _num_threads() if self.in_features * self.out_features >= _FUSED_SINGLE_THREAD_WEIGHTS else 1
        return (self._decode_kind, threads, self.out_features, self.in_features,
                getattr(self, "group_size", 0), qw.data_ptr(), s.data_ptr(),
                None if mn is None else mn.data_ptr(), None if b is None else b.data_ptr(), keep)

    def _decode_tensors(self) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def n_weight_elements(self) -> int:
        """Logical weight elements (out*in) for parameter counts; 0 for a tied copy (the float
        embedding it copies is still counted as a parameter)."""
        return 0 if self.tied_to else self.in_features * self.out_features

    # subclasses implement these
    def dequantize(self) -> torch.Tensor:  # pragma: no cover - abstract
        """Float32 ``[out, in]`` weight this module multiplies by."""
        raise NotImplementedError

    def _torch_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2, self.dequantize(), self.bias)

    def _kernel_forward(self, x2: torch.Tensor, y: torch.Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def _prefill_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return self._torch_forward(x2)

    def _threads(self, m: int) -> int:
        if m * self.in_features * self.out_features < _SINGLE_THREAD_WEIGHTS:
            return 1
        return _num_threads()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features]`` (any float dtype) -> ``[..., out_features]`` in x's dtype.

        Raises:
            MoorelabError: last dimension of x differs from in_features.
        """
        # fast path (decode): float32 CPU input, few rows, no autograd -> compiled GEMV kernel
        if (
            self._lib is not None
            and x.dtype is torch.float32
            and x.is_cpu
            and x.shape[-1] == self.in_features
            and not (x.requires_grad and torch.is_grad_enabled())
        ):
            x2 = x.reshape(-1, self.in_features)
            m = x2.shape[0]
            if 0 < m <= self.m_threshold:
                if not x2.is_contiguous():
                    x2 = x2.contiguous()
                y = x2.new_empty((m, self.out_features))
                self._kernel_forward(x2, y)
                self.__dict__["last_kernel"] = self.kernel  # (skips nn.Module.__setattr__)
                return y.view(*x.shape[:-1], self.out_features)
        return self._general_forward(x)

    def _general_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise MoorelabError(
                f"{type(self).__name__}: input last dimension {x.shape[-1]} != in_features {self.in_features}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        dtype = x2.dtype
        if dtype != torch.float32:
            x2 = x2.float()
        m = x2.shape[0]
        needs_grad = torch.is_grad_enabled() and x2.requires_grad
        if needs_grad or self._lib is None or x2.device.type != "cpu" or m == 0:
            self.last_kernel = self._fallback_name
            y = self._torch_forward(x2)
        elif m <= self.m_threshold:
            x2 = x2.contiguous()
            y = torch.empty(m, self.out_features, dtype=torch.float32)
            self._kernel_forward(x2, y)
            self.last_kernel = self.kernel
        else:
            self.last_kernel = self.prefill_kernel
            y = self._prefill_forward(x2.contiguous())
        if dtype != torch.float32:
            y = y.to(dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"kernel={self.kernel!r}, prefill_kernel={self.prefill_kernel!r}"
        )

    @property
    def _fallback_name(self) -> str:
        return "torch dequant+matmul"

    def _ptr(self, t: torch.Tensor | None):
        return None if t is None else t.data_ptr()

    def _dequant_chunks(self, x2: torch.Tensor, dequant_rows: Callable[[int, int, torch.Tensor], None]) -> torch.Tensor:
        """Prefill: dequantize blocks of output rows to float32 (C loop) and matmul each."""
        n, k = self.out_features, self.in_features
        rows = max(4, min(n, (1 << 22) // max(1, k)))  # <= 16 MB float32 per block
        buf = torch.empty(rows, k, dtype=torch.float32)
        if rows >= n:
            dequant_rows(0, n, buf)
            return F.linear(x2, buf[:n], self.bias)
        y = torch.empty(x2.shape[0], n, dtype=torch.float32)
        for n0 in range(0, n, rows):
            n1 = min(n, n0 + rows)
            b = buf[: n1 - n0]
            dequant_rows(n0, n1, b)
            y[:, n0:n1] = x2 @ b.t()
        if self.bias is not None:
            y += self.bias
        return y


class Int8WeightOnlyLinear(QuantizedLinear):
    """nn.Linear replacement with int8 per-output-channel weights (see module docstring).

    Buffers: ``qweight`` int8 ``[out, in]``, ``scale`` float32 ``[out]``.
    """

    scheme = "int8-weight-only"
    _fn_name = "w8_linear"
    _decode_kind = "int8"

    def _decode_tensors(self) -> tuple:
        return self.qweight, self.scale, None, self.bias

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 kernel: str = "auto", m_threshold: int = 8, name: str = "?"):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, m_threshold)
        self.register_buffer("qweight", qweight.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self._lib = _resolve_lib(kernel, name)
        self._fn = self._lib.w8_linear if self._lib is not None else None
        if self._lib is not None:
            self.kernel = "moorelab-avx2-gemv int8"
            self.prefill_kernel = "moorelab-avx2 dequant int8 + fp32 matmul"
        else:
            self.kernel = self.prefill_kernel = self._fallback_name

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "auto", m_threshold: int = 8, name: str = "?"):
        """Quantize an ``nn.Linear`` (weight ``[out, in]``) into this module."""
        q, s = quantize_int8_per_channel(linear.weight, f"{name}.weight")
        return cls(q, s, linear.bias, kernel=kernel, m_threshold=m_threshold, name=name)

    def dequantize(self) -> torch.Tensor:
        if self._lib is None:
            return self.qweight.float() * self.scale[:, None]
        out = torch.empty(self.out_features, self.in_features)
        self._lib.w8_dequant(self.qweight.data_ptr(), self.scale.data_ptr(), out.data_ptr(), self.out_features,
                             self.in_features, _dequant_threads(self.out_features, self.in_features))
        return out

    def _kernel_ptrs(self) -> tuple:
        return (self.qweight.data_ptr(), self.scale.data_ptr(), self._ptr(self.bias))

    def _kernel_forward(self, x2, y):
        m = x2.shape[0]
        qw, sc, b = self._ptrs or self._refresh_ptrs()
        self._fn(x2.data_ptr(), m, self.in_features, qw, sc, b, y.data_ptr(), self.out_features, self._threads(m))

    def _prefill_forward(self, x2):
        k = self.in_features

        def dq(n0, n1, buf):
            self._lib.w8_dequant(self.qweight[n0].data_ptr(), self.scale[n0].data_ptr(), buf.data_ptr(),
                                 n1 - n0, k, _dequant_threads(n1 - n0, k))

        return self._dequant_chunks(x2, dq)


class Int4WeightOnlyLinear(QuantizedLinear):
    """nn.Linear replacement with group-wise asymmetric int4 weights (see module docstring).

    Buffers: ``qweight`` uint8 ``[out, in/2]`` (low nibble = even input index), ``scales`` and
    ``mins`` float16 ``[out, in/group_size]``.
    """

    scheme = "int4-weight-only"
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
            self.prefill_kernel = f"moorelab-avx2 dequant int4-g{group_size} + fp32 matmul{act}"
        else:
            self.kernel = self.prefill_kernel = self._fallback_name

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

    def _with_rounded_activations(self, x2: torch.Tensor, matmul: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``matmul(x)`` = x·Ŵᵀ(+b) evaluated as the a16/a8 kernels do: the int4 part on x rounded
        per 32-block, the min term ``Σ_g min[n,g]·Σ_{k∈g} x[k]`` on the float x."""
        if self.activation_bits == 32:
            return matmul(x2)
        xr = round_activations_blocks(x2, self.activation_bits)
        m, k = x2.shape
        # x·Ŵᵀ with Ŵ = scale·q + min: the kernel feeds xr to the scale·q part only, so add back
        # (x - xr) times the (group-constant) mins: group sums of (x - xr) [M, K/G] · mins[N, K/G]ᵀ
        resid = (x2 - xr).reshape(m, k // self.group_size, self.group_size).sum(-1)
        y = matmul(xr)
        return y.addmm_(resid, self.mins.float().t())  # in place: no second [M, N] buffer (lm_head: 49,152 columns)

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

        def dq(n0, n1, buf):
            self._lib.w4_dequant(self.qweight[n0].data_ptr(), self.scales[n0].data_ptr(), self.mins[n0].data_ptr(),
                                 g, buf.data_ptr(), n1 - n0, k, _dequant_threads(n1 - n0, k))

        return self._with_rounded_activations(x2, lambda xx: self._dequant_chunks(xx, dq))


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


_QUANT_CLASSES = (Int8WeightOnlyLinear, Int4WeightOnlyLinear, Int8DynamicLinear)


# --------------------------------------------------------------------------- report


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


# --------------------------------------------------------------------------- public entry points


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


def _module_bytes(m: nn.Module) -> int:
    return weight_bytes(m)


def _tied_weight_ids(model: nn.Module) -> set[int]:
    """Storage pointers of Linear weights also used by a non-Linear module (e.g. an Embedding)."""
    ptrs = set()
    for mod in model.modules():
        if isinstance(mod, nn.Embedding):
            ptrs.add(mod.weight.untyped_storage().data_ptr())
    return ptrs


def _default_filter(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, (nn.Linear, QuantizedLinear))


def _make(config, linear: nn.Linear, name: str) -> QuantizedLinear:
    if isinstance(config, Int8WeightOnlyConfig):
        return Int8WeightOnlyLinear.from_linear(linear, config.kernel, config.m_threshold, name)
    if isinstance(config, Int4WeightOnlyConfig):
        return Int4WeightOnlyLinear.from_linear(linear, config.group_size, config.kernel, config.m_threshold, name,
                                                config.activation_bits)
    if isinstance(config, Int8DynamicConfig):
        return Int8DynamicLinear.from_linear(linear, config.kernel, config.m_threshold, name)
    raise MoorelabError(
        f"config {type(config).__name__}: expected Int8WeightOnlyConfig, Int4WeightOnlyConfig or Int8DynamicConfig"
    )


def _set_submodule(root: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, child = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def quantize_(
    model: nn.Module,
    config: Int8WeightOnlyConfig | Int4WeightOnlyConfig | Int8DynamicConfig,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> QuantizeReport:
    """Replace the model's ``nn.Linear`` modules in place by quantized modules; return a report.

    All selected layers are quantized first and swapped in only when every one succeeded, so on
    any error the model is left exactly as it was ("nothing written").

    Args:
        model: any module whose matmuls are ``nn.Linear`` (moorelab Transformer, HF models).
        config: :class:`Int8WeightOnlyConfig`, :class:`Int4WeightOnlyConfig` or
            :class:`Int8DynamicConfig`.
        filter_fn: ``filter_fn(module, fqn) -> bool`` choosing which ``nn.Linear`` modules to
            quantize (torchao convention); default: every ``nn.Linear``. Only nn.Linear and
            already-quantized modules are offered to it.

    Returns:
        :class:`QuantizeReport` with per-layer SQNR (dB), bytes before/after and kernel names.

    Raises:
        MoorelabError: a selected module is already quantized; int4 group size does not divide
            a layer's in_features; a weight is non-finite; unknown config; nothing to quantize.
    """
    if not isinstance(config, (Int8WeightOnlyConfig, Int4WeightOnlyConfig, Int8DynamicConfig)):
        raise MoorelabError(
            f"config {type(config).__name__}: expected Int8WeightOnlyConfig, Int4WeightOnlyConfig or Int8DynamicConfig"
        )
    if not isinstance(model, nn.Module):
        raise MoorelabError(f"quantize_: expected an nn.Module, got {type(model).__name__}")
    filt = filter_fn or _default_filter
    selected: list[tuple[str, nn.Module]] = []
    for fqn, mod in model.named_modules(remove_duplicate=False):
        if not isinstance(mod, (nn.Linear, QuantizedLinear)):
            continue
        if not filt(mod, fqn):
            continue
        if isinstance(mod, QuantizedLinear):
            raise MoorelabError(
                f"module {fqn}: already quantized ({type(mod).__name__}, kernel {mod.kernel!r}); "
                "quantize the float model instead (nothing was changed)"
            )
        selected.append((fqn, mod))
    if not selected:
        raise MoorelabError(f"quantize_: no nn.Linear module selected in {type(model).__name__} (nothing was changed)")

    bytes_before = weight_bytes(model)
    tied_ptrs = _tied_weight_ids(model)
    built: list[tuple[str, QuantizedLinear, LayerQuantReport]] = []
    done: dict[int, QuantizedLinear] = {}  # a Linear shared under two names gets one copy
    with torch.no_grad():
        for fqn, lin in selected:
            if id(lin) in done:
                built.append((fqn, done[id(lin)], None))
                continue
            qmod = done[id(lin)] = _make(config, lin, fqn)
            tied = lin.weight.untyped_storage().data_ptr() in tied_ptrs
            row = LayerQuantReport(
                name=fqn,
                in_features=lin.in_features,
                out_features=lin.out_features,
                scheme=qmod.scheme,
                kernel=qmod.kernel,
                prefill_kernel=qmod.prefill_kernel,
                sqnr_db=sqnr_db(lin.weight, qmod.dequantize()),
                bytes_before=_module_bytes(lin),
                bytes_after=_module_bytes(qmod),
                tied=tied,
            )
            built.append((fqn, qmod, row))
    # every layer quantized without error: now swap them in
    for fqn, qmod, row in built:
        if row is not None and row.tied:
            qmod.tied_to = "embedding"
        _set_submodule(model, fqn, qmod)
    report = QuantizeReport(
        config=config.name,
        layers=[r for _, _, r in built if r is not None],
        model_bytes_before=bytes_before,
        model_bytes_after=weight_bytes(model),
        kernel_status=_kernels.status() if config.kernel != "torch" else "pure torch requested",
    )
    tied_rows = [r.name for r in report.layers if r.tied]
    if tied_rows:
        report.notes.append(
            f"tied weights: {', '.join(tied_rows)} got their own quantized copy; the embedding table stays float32"
        )
    return report
