"""Small compiled CPU kernels for quantized matmuls, built on first use with the system gcc.

The C source (:mod:`moorelab.improve.kernels.quant_kernels_c`) is compiled with
``gcc -O3 -mavx2 -mfma -mf16c -fopenmp -shared -fPIC`` into
``moorelab.paths.cache_dir()/kernels/<sha256 of source+flags+gcc version>/libmoorelab_quant.so``
(about one second, once per machine; later processes reuse the file) and called through
``ctypes`` with tensor data pointers. No torch C++ extension build (ninja) is involved.

The library links the same ``libgomp.so.1`` that torch has already loaded, so its OpenMP
threads are torch's (no second thread pool fighting for the 2 cores).

If gcc is missing, the CPU lacks AVX2/FMA/F16C, the compile fails, or the environment variable
``MOORELAB_NO_KERNELS`` is set, :func:`get_library` returns ``None`` and the callers use their
pure-torch path; :func:`status` says why, and every quantized module names the kernel that ran.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from moorelab.improve.kernels.quant_kernels_c import C_SOURCE

__all__ = ["get_library", "status", "KernelLibrary", "CFLAGS", "MlLin", "MlLayer", "LIN_KINDS"]

#: ``ml_lin.kind`` codes of the C dispatcher (``ml_lin_apply``)
LIN_KINDS = {"f32": 1, "int8": 2, "int4": 3, "int4-a16": 4, "int4-a8": 5, "int8-dynamic": 6}


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
        ("hd", ctypes.c_int32), ("rope", ctypes.c_int32), ("eps", ctypes.c_float), ("pad_", ctypes.c_int32)]

CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fPIC", "-shared", "-std=c11"]
_LIB_NAME = "libmoorelab_quant.so"
_ABI_VERSION = 8

_state: dict = {"loaded": False, "lib": None, "reason": "not tried yet"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _gcc_version(gcc: str) -> str:
    try:
        out = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


class KernelLibrary:
    """Typed ctypes bindings of the compiled kernels (all pointers are raw ``data_ptr()``)."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        vp, i64, cint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.ml_abi_version.restype = cint
        lib.ml_abi_version.argtypes = []
        if lib.ml_abi_version() != _ABI_VERSION:
            raise OSError(f"{path}: kernel ABI {lib.ml_abi_version()} != {_ABI_VERSION}")
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
        lib.ml_f32_linear.restype = None
        lib.ml_f32_linear.argtypes = [vp, i64, i64, vp, vp, vp, i64, cint]
        lib.ml_fused_abi.restype = cint
        lib.ml_fused_abi.argtypes = []
        want = ctypes.sizeof(MlLin) * 1000 + ctypes.sizeof(MlLayer)
        if lib.ml_fused_abi() != want:
            raise OSError(f"{path}: fused-decode structure sizes {lib.ml_fused_abi()} != {want}")
        lib.ml_decode_layers.restype = cint
        lib.ml_decode_layers.argtypes = [vp, ctypes.c_int32, i64, vp, i64, vp, vp, ctypes.c_int32]
        self.lib = lib
        self.decode_layers = lib.ml_decode_layers
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


def _build(cache_root: Path) -> Path:
    gcc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")
    if gcc is None:
        raise OSError("gcc not found on PATH")
    # Link against the libgomp torch already loaded (same soname) when it ships one.
    torch_lib = Path(torch.__file__).parent / "lib"
    gomp = torch_lib / "libgomp.so.1"
    link = [str(gomp), f"-Wl,-rpath,{torch_lib}"] if gomp.exists() else ["-lgomp"]
    key_text = "\n".join([C_SOURCE, " ".join(CFLAGS), " ".join(link), _gcc_version(gcc)])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    out_dir = cache_root / "kernels" / key
    target = out_dir / _LIB_NAME
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "moorelab_quant.c"
    src.write_text(C_SOURCE)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = [gcc, *CFLAGS, "-o", tmp, str(src), *link, "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        os.unlink(tmp)
        first = (res.stderr.strip().splitlines() or ["?"])[0]
        raise OSError(f"gcc failed ({' '.join(cmd)}): {first}")
    os.replace(tmp, target)  # atomic: concurrent builders never see a half-written file
    return target


def get_library() -> KernelLibrary | None:
    """Return the compiled kernel library, building it on first use; ``None`` if unavailable.

    Returns:
        :class:`KernelLibrary`, or ``None`` when gcc is absent, the CPU lacks AVX2/FMA/F16C,
        compilation fails or ``MOORELAB_NO_KERNELS`` is set (see :func:`status` for why).
        Never raises: callers fall back to pure-torch kernels.
    """
    if os.environ.get("MOORELAB_NO_KERNELS"):
        return None
    if _state["loaded"]:
        return _state["lib"]
    _state["loaded"] = True
    flags = _cpu_flags()
    missing = [f for f in ("avx2", "fma", "f16c") if f not in flags]
    if missing:
        _state["reason"] = f"CPU lacks {', '.join(missing)}"
        return None
    try:
        from moorelab.paths import cache_dir

        _state["lib"] = KernelLibrary(_build(cache_dir()))
        _state["reason"] = f"loaded {_state['lib'].path}"
    except (OSError, subprocess.SubprocessError) as exc:
        _state["reason"] = f"kernel build/load failed: {exc}"
        _state["lib"] = None
    return _state["lib"]


def status() -> str:
    """One line: whether the compiled kernels are in use, and the reason if not."""
    if os.environ.get("MOORELAB_NO_KERNELS"):
        return "disabled by MOORELAB_NO_KERNELS"
    get_library()
    return _state["reason"]
