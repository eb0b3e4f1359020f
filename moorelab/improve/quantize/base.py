"""What every quantized ``nn.Linear`` replacement shares.

:class:`QuantizedLinear` (the base of :mod:`.int8`, :mod:`.int4` and :mod:`.int8_dynamic`
modules): decode calls (``M <= m_threshold`` rows) run the compiled GEMV kernel, prefill calls the
int8 modules' integer GEMM (``ml_w8_gemm``) or, for int4, a dequantize + float32 matmul, autograd
or a missing compiler the pure-torch path; raw buffer
pointers are cached; copies and pickles look the kernel library up again. Also here: the kernel
library lookup (the one import of :mod:`moorelab.kernels` in this package), the thread
heuristics, and the checks shared by every config and quantizer.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from moorelab.errors import MoorelabError
from moorelab import kernels as _kernels

_KERNEL_CHOICES = ("auto", "moorelab", "torch")


def _check_kernel(kernel: str) -> None:
    if kernel not in _KERNEL_CHOICES:
        raise MoorelabError(f"kernel={kernel!r}: expected one of {', '.join(_KERNEL_CHOICES)}")


def _check_threshold(m_threshold: int) -> None:
    if not isinstance(m_threshold, int) or m_threshold < 0:
        raise MoorelabError(f"m_threshold={m_threshold!r}: expected an integer >= 0")


def _float_weight(weight: torch.Tensor, name: str) -> torch.Tensor:
    w = weight.detach().to(torch.float32)
    if w.dim() != 2:
        raise MoorelabError(f"tensor {name}: expected a 2-D weight [out, in], got shape {list(w.shape)}")
    return w.contiguous()


def _check_finite(stat: torch.Tensor, name: str) -> None:
    # per-row/group max and min propagate NaN and inf: checking them is enough (and cheap)
    if not torch.isfinite(stat).all():
        raise MoorelabError(f"tensor {name}: weight has NaN or inf values; cannot quantize")


def _resolve_lib(kernel: str, name: str):
    if kernel == "torch":
        return None
    lib = _kernels.get_library()
    if lib is None and kernel == "moorelab":
        raise MoorelabError(f"layer {name}: kernel='moorelab' requested but unavailable ({_kernels.status()})")
    return lib


def _kernels_status() -> str:
    """Whether the compiled kernels are in use, or why not."""
    return _kernels.status()


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
    config_type: type | None = None  # the config dataclass that asks quantize_ for this module

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
    # much as a small GEMV); any replacement of a buffer or .to()/_apply drops the cache. A buffer
    # re-pointed in place (``buffer.data = ...``) registers nothing: call weights_moved() after it
    # (moorelab.model.fused_decode does, after packing the weights into its arena).
    def weights_moved(self) -> None:
        """Forget the cached data pointers of the buffers (after ``qweight.data = ...`` and the like)."""
        self.__dict__["_ptrs"] = None

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
    @classmethod
    def from_config(cls, config, linear: nn.Linear, name: str) -> QuantizedLinear:  # pragma: no cover - abstract
        """Quantize ``linear`` (module path ``name``, for messages) as ``config`` (a ``config_type``) asks."""
        raise NotImplementedError

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
