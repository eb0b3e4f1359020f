"""Ctrl-C (SIGINT) and SIGTERM: one line, exit 130 / 143, nothing half-written, the next command
works with the same cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def start(*args, **kw) -> subprocess.Popen:
    # a shell's background job inherits SIGINT ignored (and so would the child): restore the default
    return subprocess.Popen([sys.executable, "-c", "from moorelab.cli import main; main()", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kw)


def wait_until_catching(proc: subprocess.Popen, sig: int, timeout: float = 300.0) -> None:
    """Wait until the process has installed its handler for ``sig`` (bit ``sig - 1`` of SigCgt in
    /proc/PID/status): on a loaded machine the imports before ``main()`` can take longer than any
    fixed sleep, and a signal sent before the handler exists kills the process by default."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with open(f"/proc/{proc.pid}/status") as f:
            caught = int(next(ln for ln in f if ln.startswith("SigCgt:")).split()[1], 16)
        if caught >> (sig - 1) & 1:
            return
        time.sleep(0.2)
    pytest.fail(f"the process never installed its handler for signal {sig}")


def test_ctrl_c_during_measurement_exits_130_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    proc = start("run", "--quick", "--out", out)
    try:
        for line in proc.stdout:  # rich flushes each line: "parity: ..." comes just before measuring
            if line.startswith("parity:"):
                break
        else:
            pytest.fail("the run ended before measuring: " + proc.stderr.read()[-2000:])
        time.sleep(2.0)
        assert list(tmp_path.glob(".out.staging-*")), "the run has a staging folder while it works"
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (rest[-2000:], err[-2000:])
    assert "Traceback" not in err + rest and "Aborted" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted (Ctrl-C)"), err
    assert not out.exists() and os.listdir(tmp_path) == []  # no output folder, no staging folder

    # the next command on the same (converted-model) cache works
    heat = tmp_path / "attention.png"
    again = subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", "explain", "attention",
                            "--model", "smollm2-135m", "--out", str(heat)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert heat.stat().st_size > 1000 and "smollm2-135m: layer 0, head 0" in again.stdout


def test_sigterm_exits_143_with_one_line_and_no_plot(tmp_path):
    from moorelab.law.data import CHINCHILLA

    shared = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "trends")
    if not os.path.isfile(os.path.join(shared, CHINCHILLA)):
        pytest.skip(f"shared trend data not found at {shared}")
    plot = tmp_path / "c.png"
    proc = start("trend", "chinchilla", "--data", shared, "--plot", plot)  # full grid: many seconds
    try:
        wait_until_catching(proc, signal.SIGTERM)
        time.sleep(2.0)  # into the grid fit
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines() == ["terminated (SIGTERM): stopped; nothing half-written was kept"]
    assert "Traceback" not in err + rest and not plot.exists()
