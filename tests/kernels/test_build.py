"""The kernel sources compile warning-free with the project's flags, and the build reports warnings."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from moorelab import kernels
from moorelab.kernels import build

MOORELAB_KERNELS = Path(build.__file__).parent


def _gcc() -> str:
    gcc = build.find_gcc()
    if gcc is None:
        if os.environ.get("CI"):
            pytest.fail("gcc is required in CI (the compiled kernels are built with it)")
        pytest.skip("gcc not on PATH: the compiled kernels are unavailable here")
    return gcc


def test_sources_compile_without_a_warning(tmp_path):
    """CI fails on any warning: the project's flags (with -Wall -Wextra) plus -Werror."""
    assert {"-Wall", "-Wextra"} <= set(kernels.CFLAGS)
    cmd = build.compile_command(_gcc(), tmp_path / "lib.so", extra_flags=["-Werror"])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert (tmp_path / "lib.so").stat().st_size > 0


def test_every_c_file_is_compiled_and_every_source_is_package_data():
    files = build.source_files()
    assert {p.name for p in files} >= {"common.h", "fused_decode.h", "f32_gemv.c", "int8.c", "int4.c",
                                       "int8_dynamic.c", "int8_gemm.c", "fused_decode.c", "abi.c"}
    cmd = build.compile_command("gcc", Path("out.so"))
    assert [a for a in cmd if a.endswith(".c")] == [str(p) for p in files if p.suffix == ".c"]
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"moorelab.kernels" = ["csrc/*.c", "csrc/*.h"]' in pyproject


def test_a_warning_is_reported_not_swallowed(tmp_path, monkeypatch):
    _gcc()
    src = tmp_path / "csrc"
    shutil.copytree(build.CSRC, src)
    with open(src / "abi.c", "a") as fh:
        fh.write("\nint ml_test_warning(void) { int unused; return 0; }\n")
    monkeypatch.setattr(build, "CSRC", src)
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MOORELAB_NO_KERNELS", raising=False)
    monkeypatch.setattr(build, "_state", {"loaded": False, "lib": None, "reason": "not tried yet"})
    with pytest.warns(build.KernelBuildWarning, match="unused"):
        lib = build.get_library()
    assert lib is not None and lib.path.is_relative_to(tmp_path)
    assert "1 warning(s)" in build.status() and build.LOG_NAME in build.status()
    # a later process loads the cached library silently but still says so
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path, output = build.build(tmp_path / "cache")
    assert path == lib.path and "unused" in output


def test_a_failed_build_names_the_error(tmp_path):
    _gcc()
    src = tmp_path / "csrc"
    src.mkdir()
    (src / "broken.c").write_text("int ml_broken(void) { return undeclared_name; }\n")
    with pytest.raises(OSError, match="undeclared_name.*full output"):
        build.build(tmp_path / "cache", src_dir=src)
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("MOORELAB_NO_KERNELS", "1")
    assert kernels.get_library() is None
    assert kernels.status() == "disabled by MOORELAB_NO_KERNELS"


def test_ground_floor_imports_nothing_above_it():
    """moorelab.kernels may import the standard library, torch, moorelab.errors and moorelab.paths."""
    allowed = {"moorelab.errors", "moorelab.paths"}
    for py in MOORELAB_KERNELS.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.startswith("moorelab") and not name.startswith("moorelab.kernels"):
                    assert name in allowed or any(name.startswith(a + ".") for a in allowed), (py.name, name)


def test_prefetch_lines_never_touches_what_it_is_given():
    # the fused decode prefetches addresses that may have gone stale (objects freed since the
    # plan was built): a prefetch must not fault on NULL, unmapped or kernel-space addresses
    import subprocess
    import sys

    if kernels.get_library() is None:
        pytest.skip(f"compiled kernels unavailable: {kernels.status()}")
    # in a child process: a fault would kill it, not the test session
    code = ("import ctypes\nfrom moorelab import kernels\nlib = kernels.get_library()\n"
            "addrs = [0, 1, 64, 0xDEAD0000, 2**47 - 64, 2**63, 2**64 - 64, id(object())]\n"
            "lib.prefetch_lines((ctypes.c_uint64 * len(addrs))(*addrs), len(addrs))\n"
            "lib.prefetch_lines(None, 0)\nprint('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-500:])


@pytest.mark.parametrize("family, at_least", [("f32", 8), ("a8bw8", 4)])
def test_the_spread_prefetches_survive_compilation(family, at_least):
    # gcc 12 -O3 once dropped every _mm_prefetch(..., _MM_HINT_T1) of f32_gemv.c without a word
    # (the float32 decode ran ~15% slower); ml_prefetch4 now emits them as asm. float32: 4 in the
    # 3-row and 4 in the 2-row batched tiles (one row, the decode, reads without software
    # prefetch); int8 b32: 4 in its row tile. Counted over every function whose name holds the
    # family's name, as the compiler inlines or outlines the static helpers as it likes.
    lib = kernels.get_library()
    if lib is None:
        pytest.skip(f"compiled kernels unavailable: {kernels.status()}")
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump (binutils) not installed")
    out = subprocess.run([objdump, "-d", str(lib.path)], capture_output=True, text=True, check=True).stdout
    count, current = {}, None
    for line in out.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if head:
            current = head.group(1)
        elif "prefetcht1" in line and current:
            count[current] = count.get(current, 0) + 1
    assert sum(c for f, c in count.items() if family in f) >= at_least, count
