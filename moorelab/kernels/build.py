"""Build the kernel library from ``csrc/`` with the system gcc, cache it per machine, load it once.

All ``csrc/*.c`` files are compiled in one gcc call (:data:`CFLAGS`) into
``moorelab.paths.cache_dir()/kernels/<key>/libmoorelab_quant.so``, where ``<key>`` is a sha256 over
every source file (``*.c`` and ``*.h``, names and bytes), the flags, the link line and the gcc
version: about one second, once per machine; later processes reuse the file. The library is
written under a temporary name and renamed, so concurrent builders never load a half-written one.

The library links the same ``libgomp.so.1`` that torch has already loaded, so its OpenMP threads
are torch's (no second thread pool fighting for the 2 cores).

If gcc is missing, the CPU lacks AVX2/FMA/F16C, the compile fails, or the environment variable
``MOORELAB_NO_KERNELS`` is set, :func:`get_library` returns ``None`` and the callers use their
pure-torch path; :func:`status` says why.

The sources compile without a single warning under ``-Wall -Wextra`` (``tests/kernels`` holds
them to ``-Werror``). Should gcc print anything anyway (another compiler version), its output is
kept in ``gcc.log`` beside the library, raised as a :class:`KernelBuildWarning` when it is built,
and named by :func:`status` in every process that loads it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from moorelab.kernels.binding import KernelLibrary
from moorelab.paths import cache_dir

__all__ = ["CFLAGS", "CSRC", "KernelBuildWarning", "build", "compile_command", "find_gcc", "get_library",
           "source_files", "status"]

#: directory of the C sources (package data)
CSRC = Path(__file__).with_name("csrc")
CFLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-Wall", "-Wextra"]
LIB_NAME = "libmoorelab_quant.so"
#: gcc's output (warnings), kept beside the library when there was any
LOG_NAME = "gcc.log"
#: CPU features the kernels are compiled for (``/proc/cpuinfo`` names)
CPU_FLAGS = ("avx2", "fma", "f16c")

_state: dict = {"loaded": False, "lib": None, "reason": "not tried yet"}


class KernelBuildWarning(UserWarning):
    """gcc printed warnings while building the kernel library (the library was still built)."""


def source_files(src_dir: Path | None = None) -> list[Path]:
    """Every C source and header of the library (``*.c``, ``*.h`` in ``src_dir``, default :data:`CSRC`), by name."""
    src_dir = CSRC if src_dir is None else src_dir
    return sorted([*src_dir.glob("*.c"), *src_dir.glob("*.h")], key=lambda p: p.name)


def find_gcc() -> str | None:
    """Path of ``$CC`` (default ``gcc``), else of ``gcc``; ``None`` if neither is on PATH."""
    return shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")


def _gcc_version(gcc: str) -> str:
    try:
        out = subprocess.run([gcc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (``avx2``, ``avx512_vnni``, ...); empty
    where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _link_flags() -> list[str]:
    # Link against the libgomp torch already loaded (same soname) when it ships one.
    torch_lib = Path(torch.__file__).parent / "lib"
    gomp = torch_lib / "libgomp.so.1"
    return [str(gomp), f"-Wl,-rpath,{torch_lib}"] if gomp.exists() else ["-lgomp"]


def compile_command(gcc: str, out: Path, src_dir: Path | None = None, extra_flags: list[str] | tuple = ()) -> list[str]:
    """The one gcc call that compiles every ``*.c`` of ``src_dir`` (default :data:`CSRC`) into ``out``."""
    c_files = [str(p) for p in source_files(src_dir) if p.suffix == ".c"]
    return [gcc, *CFLAGS, *extra_flags, "-o", str(out), *c_files, *_link_flags(), "-lm"]


def build(cache_root: Path, src_dir: Path | None = None) -> tuple[Path, str]:
    """Compile the library into ``cache_root/kernels/<key>/`` unless it is already there.

    Args:
        cache_root: the cache directory (:func:`moorelab.paths.cache_dir` in normal use).
        src_dir: the C sources (default :data:`CSRC`).

    Returns:
        ``(path of the shared library, what gcc printed when it was built: "" if nothing)``.
        A fresh build that printed anything also raises a :class:`KernelBuildWarning`.

    Raises:
        OSError: gcc is not on PATH or the compile failed (the message has gcc's first error
            line and the path of its full output).
    """
    gcc = find_gcc()
    if gcc is None:
        raise OSError("gcc not found on PATH")
    h = hashlib.sha256()
    for p in source_files(src_dir):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update("\n".join([" ".join(CFLAGS), " ".join(_link_flags()), _gcc_version(gcc)]).encode())
    out_dir = cache_root / "kernels" / h.hexdigest()[:16]
    target, log = out_dir / LIB_NAME, out_dir / LOG_NAME
    if target.exists():
        return target, log.read_text(errors="replace").strip() if log.exists() else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    cmd = compile_command(gcc, Path(tmp), src_dir)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = res.stderr.strip()
    if output:
        fd, tmp_log = tempfile.mkstemp(suffix=".log", dir=out_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write(output + "\n")
        os.replace(tmp_log, log)
    else:
        log.unlink(missing_ok=True)  # from an earlier failed attempt
    if res.returncode != 0:
        os.unlink(tmp)
        lines = output.splitlines() or ["?"]
        first = next((ln for ln in lines if "error" in ln), lines[0])
        where = f" (full output: {log})" if output else ""
        raise OSError(f"gcc failed ({' '.join(cmd)}): {first}{where}")
    os.replace(tmp, target)  # atomic: concurrent builders never see a half-written file
    if output:
        warnings.warn(f"gcc printed warnings while building {target} (kept in {log}):\n{output}",
                      KernelBuildWarning, stacklevel=2)
    return target, output


def get_library() -> KernelLibrary | None:
    """Return the compiled kernel library, building it on first use; ``None`` if unavailable.

    Returns:
        :class:`~moorelab.kernels.binding.KernelLibrary`, or ``None`` when gcc is absent, the CPU
        lacks AVX2/FMA/F16C, compilation fails or ``MOORELAB_NO_KERNELS`` is set (see
        :func:`status` for why). Never raises: callers fall back to pure-torch kernels.
    """
    if os.environ.get("MOORELAB_NO_KERNELS"):
        return None
    if _state["loaded"]:
        return _state["lib"]
    _state["loaded"] = True
    flags = cpu_flags()
    missing = [f for f in CPU_FLAGS if f not in flags]
    if missing:
        _state["reason"] = f"CPU lacks {', '.join(missing)}"
        return None
    try:
        path, output = build(cache_dir())
        _state["lib"] = KernelLibrary(path)
        _state["reason"] = f"loaded {path}"
        if output:
            n = sum("warning:" in ln for ln in output.splitlines())
            _state["reason"] += f"; gcc printed {n} warning(s) building it, see {path.parent / LOG_NAME}"
    except (OSError, subprocess.SubprocessError) as exc:
        _state["reason"] = f"kernel build/load failed: {exc}"
        _state["lib"] = None
    return _state["lib"]


def status() -> str:
    """One line: whether the compiled kernels are in use (and whether gcc warned building them), or why not."""
    if os.environ.get("MOORELAB_NO_KERNELS"):
        return "disabled by MOORELAB_NO_KERNELS"
    get_library()
    return _state["reason"]
