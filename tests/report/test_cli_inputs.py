"""Bad input to `moorelab run`, `moorelab improve` and `moorelab trend`: one error line, exit 2,
nothing written, and no model loaded (each command runs with an empty cache that stays empty);
`moorelab` with no arguments prints its help once and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from moorelab.law.facts import FACTS_PATH


def moorelab(*args, cache: Path):
    env = dict(os.environ, MOORELAB_CACHE=str(cache))
    cmd = [sys.executable, "-c", "from moorelab.cli import main; main()", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def refused(proc, cache: Path, out: Path | None, *needles: str) -> None:
    """Exit 2, exactly one stderr line holding every needle, no traceback, no output folder, no
    staging folder, and no model conversion (the cache has no models/)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    if out is not None:
        assert not out.exists() or not any(out.iterdir())
        assert not list(out.parent.glob(f".{out.name}.staging-*"))
    assert not (cache / "models").exists()


@pytest.fixture
def files(tmp_path):
    (tmp_path / "afile").write_text("not a folder\n")
    (tmp_path / "nul.txt").write_bytes(b"\x00" * 4000 + b"Fair is foul, and foul is fair.\n" * 20)
    (tmp_path / "folder").mkdir()
    lines = FACTS_PATH.read_text().splitlines()
    (tmp_path / "two.csv").write_text("\n".join(lines[:3]) + "\n" + lines[1] + "\n")  # 2 rows + a duplicate
    return tmp_path


@pytest.mark.parametrize("args, needles", [
    (["--usd-per-hour", "nan"], ["--usd-per-hour nan: must be a finite number > 0"]),
    (["--usd-per-hour", "inf"], ["--usd-per-hour inf: must be a finite number > 0"]),
    (["--text", "{d}/nul.txt"], ["nul.txt: 86.2% of its 4,640 characters are control characters", "U+0000 x4,000", "more than 1%"]),
    (["--text", "{d}/folder"], ["--text", "folder: is a folder; expected a file"]),
    (["--facts", "{d}/folder"], ["--facts", "folder: is a folder; expected a file"]),
    (["--facts", "{d}/two.csv"], ["two.csv: 2 usable row(s) with training compute of 3 read (1 left out)", "at least 3"]),
    (["--model", "{d}/folder"], ["folder: a folder without config.json"]),
    (["--out", "{d}/afile/out"], ["--out", "afile/out: cannot create it:", "afile is a file, not a folder"]),
    (["--out", "{d}/afile"], ["--out", "afile: exists and is not a folder"]),
])
def test_run_refuses_bad_input_before_loading_the_model(files, args, needles):
    out = files / "out"
    argv = [a.format(d=files) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    proc = moorelab("run", "--quick", *argv, cache=files / "cache")
    refused(proc, files / "cache", out, *needles)
    if "two.csv" in argv:  # the rows left out are named on the terminal, each with its reason
        assert "row 4 (" in proc.stdout and "left out: duplicate of row 2" in proc.stdout


@pytest.mark.parametrize("args, needles", [
    (["--usd-per-hour", "inf"], ["--usd-per-hour inf: must be a finite number > 0"]),
    (["--text", "{d}/nul.txt"], ["nul.txt:", "control characters"]),
    (["--text", "{d}/folder"], ["--text", "is a folder"]),
    (["--calibration-tokens", "0"], ["--calibration-tokens 0: must be >= 1"]),
    (["--calibration-play", "comedies/no-such-play.md"], ["no-such-play.md: play not found"]),
])
def test_improve_refuses_bad_input_before_loading_the_model(files, args, needles):
    out = files / "out"
    argv = [a.format(d=files) for a in args]
    proc = moorelab("improve", "smollm2-135m", "--with", "int8", "--quick", "--out", out, *argv, cache=files / "cache")
    refused(proc, files / "cache", out, *needles)


def test_improve_refuses_an_output_path_under_a_file(files):
    proc = moorelab("improve", "smollm2-135m", "--with", "int8", "--out", files / "afile" / "o", cache=files / "cache")
    refused(proc, files / "cache", None, "--out", "afile is a file, not a folder")


@pytest.mark.parametrize("args, needles", [
    (["compute", "--data", "{d}/afile", "--no-plot"], ["--data", "afile: is a file; expected a folder"]),
    (["compute", "--data", "{d}/missing", "--no-plot"], ["--data", "missing: no such folder"]),
    (["forecast", "1e27", "--trend", "csv", "--csv", "{d}/folder", "--no-plot"], ["--csv", "folder: is a folder"]),
    (["chinchilla", "--plot", "{d}/afile/c.png"], ["--plot", "afile is a file, not a folder"]),
    (["prices", "--plot", "{d}/folder"], ["--plot", "folder: is a folder; expected a file path"]),
])
def test_trend_commands_check_their_files_first(files, args, needles):
    proc = moorelab("trend", *[a.format(d=files) for a in args], cache=files / "cache")
    refused(proc, files / "cache", None, *needles)


@pytest.mark.parametrize("group", [[], ["trend"], ["data"], ["explain"]])
def test_no_arguments_prints_the_help_once_and_exits_0(tmp_path, group):
    proc = moorelab(*group, cache=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.count("Usage:") == 1 and proc.stdout.count("Commands") == 1
    helped = moorelab(*group, "--help", cache=tmp_path)
    assert helped.returncode == 0 and helped.stdout.strip() == proc.stdout.strip()  # the help of --help
