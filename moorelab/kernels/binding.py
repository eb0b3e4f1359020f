"""ctypes binding of the compiled kernel library: argument types, and the fused-decode structures.

:class:`KernelLibrary` loads a built ``libmoorelab_quant.so`` (see :mod:`moorelab.kernels.build`),
checks that it is the ABI this file describes, and exposes each C kernel as a typed function
(every pointer is a raw ``tensor.data_ptr()``). :class:`MlLin` / :class:`MlLayer` mirror the C
``ml_lin`` / ``ml_layer`` of ``csrc/fused_decode.h`` field for field.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

__all__ = ["ABI_VERSION", "KernelLibrary", "LIN_KINDS", "MlLayer", "MlLin"]

#: ``ML_ABI_VERSION`` of ``csrc/common.h`` that the argument types below describe
ABI_VERSION = 20

#: ``ml_lin.kind`` codes of the C dispatcher (``ml_lin_apply``)
LIN_KINDS = {"f32": 1, "int8": 2, "int4": 3, "int4-a16": 4, "int4-a8": 5, "int8-dynamic": 6, "int8-dynamic-b32": 7}


class MlLin(ctypes.Structure):
    """Mirror of the C ``ml_lin``: one linear layer for the fused decode (pointers are ``data_ptr()``)."""

    _fields_ = [("kind", ctypes.c_int32), ("nthreads", ctypes.c_int32), ("N", ctypes.c_int64),
                ("K", ctypes.c_int64), ("G", ctypes.c_int64), ("w", ctypes.c_void_p), ("s", ctypes.c_void_p),
                ("mn", ctypes.c_void_p), ("bias", ctypes.c_void_p)]


class MlLayer(ctypes.Structure):
    """Mirror of the C ``ml_layer``: one LLaMA-family decoder layer for ``ml_decode_layers``."""

    _fields_ = [(n, MlLin) for n in ("q", "k", "v", "o", "gate", "up", "down")] + [
        ("attn_norm", ctypes.c_void_p), ("ffn_norm", ctypes.c_void_p), ("kc", ctypes.c_void_p),
        ("vc", ctypes.c_void_p), ("cap", ctypes.c_int64), ("H", ctypes.c_int32), ("Hkv", ctypes.c_int32),
        ("hd", ctypes.c_int32), ("rope", ctypes.c_int32), ("eps", ctypes.c_float), ("kv_f16", ctypes.c_int32)]


class KernelLibrary:
    """Typed ctypes bindings of the compiled kernels (all pointers are raw ``data_ptr()``).

    Raises:
        OSError: the file cannot be loaded, or its ABI version or fused-decode structure sizes
            differ from this binding's.
    """

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        vp, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.ml_abi_version.restype = cint
        lib.ml_abi_version.argtypes = []
        if lib.ml_abi_version() != ABI_VERSION:
            raise OSError(f"{path}: kernel ABI {lib.ml_abi_version()} != {ABI_VERSION}")
        lib.ml_w8_linear.restype = None
        lib.ml_w8_linear.argtypes = [vp, i64, i64, vp, vp, vp, vp, i64, cint]
        lib.ml_w8_dequant.restype = None
        lib.ml_w8_dequant.argtypes = [vp, vp, vp, i64, i64, cint]
        lib.ml_w4_linear.restype = cint
        lib.ml_w4_linear.argtypes = [vp, i64, i64, vp, vp, vp, i64, vp, vp, i64, cint]
        lib.ml_w4a16_linear.restype = cint
        lib.ml_w4a16_linear.argtypes = [vp, i64, i64, vp, vp, vp, i64, vp, vp, i64, cint]
        lib.ml_w4a8_linear.restype = cint
        lib.ml_w4a8_linear.argtypes = [vp, i64, i64, vp, vp, vp, i64, vp, vp, i64, cint]
        lib.ml_w4_dequant.restype = None
        lib.ml_w4_dequant.argtypes = [vp, vp, vp, i64, vp, i64, i64, cint]
        lib.ml_a8w8_linear.restype = cint
        lib.ml_a8w8_linear.argtypes = [vp, i64, i64, vp, vp, vp, vp, i64, cint, vp]
        lib.ml_a8bw8_linear.restype = cint
        lib.ml_a8bw8_linear.argtypes = [vp, i64, i64, vp, vp, vp, vp, i64, cint]
        lib.ml_a8b_round.restype = None
        lib.ml_a8b_round.argtypes = [vp, i64, i64, vp, cint]
        lib.ml_w8_gemm.restype = cint
        lib.ml_w8_gemm.argtypes = [vp, i64, i64, vp, vp, vp, vp, i64, cint, cint]
        lib.ml_w8_gemm_isa.restype = cint
        lib.ml_w8_gemm_isa.argtypes = [cint]
        lib.ml_w4a8_gemm.restype = cint
        lib.ml_w4a8_gemm.argtypes = [vp, i64, i64, vp, vp, vp, i64, vp, vp, i64, cint]
        lib.ml_w4q_prep_ref.restype = None
        lib.ml_w4q_prep_ref.argtypes = [cint, vp, i64, i64, vp, vp, vp]
        lib.ml_w4q_prep.restype = None
        lib.ml_w4q_prep.argtypes = [cint, vp, i64, i64, vp, vp, vp]
        lib.ml_a8b_prep_ref.restype = None
        lib.ml_a8b_prep_ref.argtypes = [vp, i64, vp, vp]
        lib.ml_a8b_prep.restype = None
        lib.ml_a8b_prep.argtypes = [vp, i64, vp, vp]
        lib.ml_f32_linear.restype = None
        lib.ml_f32_linear.argtypes = [vp, i64, i64, vp, vp, vp, i64, cint]
        lib.ml_attn_causal.restype = cint
        lib.ml_attn_causal.argtypes = [vp, vp, vp, vp, i64, i64, i64, i64, i64, i64, vp, ctypes.c_float, cint]
        self.attn_causal = lib.ml_attn_causal
        lib.ml_fused_abi.restype = cint
        lib.ml_fused_abi.argtypes = []
        want = ctypes.sizeof(MlLin) * 1000 + ctypes.sizeof(MlLayer)
        if lib.ml_fused_abi() != want:
            raise OSError(f"{path}: fused-decode structure sizes {lib.ml_fused_abi()} != {want}")
        lib.ml_decode_layers.restype = cint
        lib.ml_decode_layers.argtypes = [vp, ctypes.c_int32, i64, vp, i64, vp, vp, ctypes.c_int32, vp,
                                         ctypes.c_float, vp, vp, vp]
        self.lib = lib
        self.decode_layers = lib.ml_decode_layers
        lib.ml_decode_batch.restype = cint
        lib.ml_decode_batch.argtypes = [vp, ctypes.c_int32, i64, ctypes.c_int32, vp, i64, vp, vp, vp, ctypes.c_int32,
                                        vp, ctypes.c_float, vp, vp, vp]
        self.decode_batch = lib.ml_decode_batch
        lib.ml_prefetch_lines.restype = None
        lib.ml_prefetch_lines.argtypes = [vp, i64]
        self.prefetch_lines = lib.ml_prefetch_lines
        lib.ml_argmax_rows.restype = None
        lib.ml_argmax_rows.argtypes = [vp, i64, i64, i64, vp]
        self.argmax_rows = lib.ml_argmax_rows
        lib.ml_read_sum.restype = ctypes.c_double
        lib.ml_read_sum.argtypes = [vp, i64, cint]
        self.read_sum = lib.ml_read_sum
        lib.ml_lin_forward.restype = cint
        lib.ml_lin_forward.argtypes = [vp, vp, vp]
        self.lin_forward = lib.ml_lin_forward
        self.f32_linear = lib.ml_f32_linear
        self.w8_linear = lib.ml_w8_linear
        self.w8_dequant = lib.ml_w8_dequant
        self.w4_linear = lib.ml_w4_linear
        self.w4_dequant = lib.ml_w4_dequant
        self.w4a16_linear = lib.ml_w4a16_linear
        self.w4a8_linear = lib.ml_w4a8_linear
        self.a8w8_linear = lib.ml_a8w8_linear
        self.a8bw8_linear = lib.ml_a8bw8_linear
        self.a8b_round = lib.ml_a8b_round
        self.w8_gemm = lib.ml_w8_gemm
        self.w8_gemm_isa = lib.ml_w8_gemm_isa
        self.w4a8_gemm = lib.ml_w4a8_gemm
        # block rounding of activations: the AVX2 code the kernels use and its scalar reference
        self.w4q_prep, self.w4q_prep_ref = lib.ml_w4q_prep, lib.ml_w4q_prep_ref
        self.a8b_prep, self.a8b_prep_ref = lib.ml_a8b_prep, lib.ml_a8b_prep_ref
