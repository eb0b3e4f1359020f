"""Small compiled CPU kernels (AVX2 + FMA + F16C): float32 / int8 / int4 GEMV and the fused decode.

The ground floor of moorelab next to :mod:`moorelab.errors` and :mod:`moorelab.paths`: it
imports nothing else of the package. The C sources are package data (``csrc/``, one file per
kernel family, layouts in their comments); :mod:`moorelab.kernels.build` compiles them with the
system gcc on first use and caches the library; :mod:`moorelab.kernels.binding` types its
functions for ``ctypes``. No torch C++ extension build (ninja) is involved.

:func:`get_library` returns ``None`` when the kernels cannot be used (no gcc, no AVX2, a failed
build, ``MOORELAB_NO_KERNELS`` set); callers then run pure torch and :func:`status` says why.
"""

from moorelab.kernels.binding import LIN_KINDS, KernelLibrary, MlLayer, MlLin
from moorelab.kernels.build import CFLAGS, get_library, status

__all__ = ["get_library", "status", "KernelLibrary", "CFLAGS", "MlLin", "MlLayer", "LIN_KINDS"]
