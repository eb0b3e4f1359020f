"""`moorelab trend/data` through the real entry point: user errors are one line, exit 2."""

import os
import subprocess
import sys

from typer.testing import CliRunner


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-c", "from moorelab.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_missing_data_dir_is_one_line_exit_2(tmp_path):
    r = _run("trend", "compute", "--data", str(tmp_path), "--no-plot")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "moorelab data fetch notable-models" in lines[0]


def test_empty_window_is_a_clear_error(trends_dir):
    from moorelab.cli import app
    from moorelab.errors import DataError

    r = CliRunner().invoke(app, ["trend", "compute", "--data", str(trends_dir), "--start",
                                 "2030-01-01", "--no-plot"])
    assert isinstance(r.exception, DataError) and "needs at least 3" in str(r.exception)
    r = CliRunner().invoke(app, ["trend", "compute", "--data", str(trends_dir), "--start",
                                 "2030/01/01", "--no-plot"])
    assert isinstance(r.exception, DataError) and "field 'start'" in str(r.exception)


def test_trend_help_lists_analyses():
    from moorelab.cli import app

    r = CliRunner().invoke(app, ["trend", "--help"])
    assert r.exit_code == 0
    for name in ("compute", "hardware", "months", "forecast"):
        assert name in r.stdout
