"""The output folder is staged: a Ctrl-C while working leaves nothing; one while the files move in
waits until they all are."""

from __future__ import annotations

import os
import signal

import pytest

from moorelab.report import results
from moorelab.report.results import staged_output


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raises KeyboardInterrupt here even if this process was started with it ignored."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_while_working_leaves_no_output_and_no_staging(tmp_path, ctrl_c_raises):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out) as stage:
            (stage / "results.json").write_text("{}")
            os.kill(os.getpid(), signal.SIGINT)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_moving_in_waits_until_every_file_is_in(tmp_path, ctrl_c_raises, monkeypatch):
    out = tmp_path / "out"
    real_replace = os.replace
    calls = []

    def replace_with_ctrl_c(src, dst):
        if not calls:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C between the first and the second file
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", replace_with_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out) as stage:
            (stage / "results.json").write_text("{}")
            (stage / "report.html").write_text("<html></html>")
    assert len(calls) == 2 and sorted(os.listdir(out)) == ["report.html", "results.json"]
    assert os.listdir(tmp_path) == ["out"]  # and no staging folder
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
