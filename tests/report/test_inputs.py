"""Every input checked before any work: the checks themselves (no model, no subprocess)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from moorelab.errors import DataError, ModelLoadError, MoorelabError
from moorelab.law.facts import FACTS_PATH, facts_for_fit
from moorelab.measure.text import MAX_CONTROL_SHARE, read_text_file
from moorelab.model.zoo import model_source
from moorelab.paths import check_output_file, check_output_folder, require_file, require_folder
from moorelab.report.inputs import check_run_inputs, check_usd_per_hour


def _writable(folder: Path) -> bool:
    try:
        (folder / ".w").write_text("x")
        (folder / ".w").unlink()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def read_only_folder(folder: Path):
    """``folder`` made really unwritable: mode 555 for ordinary users; for root (whom modes do
    not stop) also the immutable attribute (chattr +i). Skips when neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    immutable = False
    try:
        if _writable(folder) and shutil.which("chattr"):
            immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if _writable(folder):
            pytest.skip(f"cannot make {folder} read-only here (root, and chattr +i is not available)")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_output_folder_whose_parent_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(MoorelabError, match=r"--out .*afile/o: cannot create it: .*afile is a file, not a folder"):
        check_output_folder(tmp_path / "afile" / "o")
    with pytest.raises(MoorelabError, match=r"--out .*afile: exists and is not a folder"):
        check_output_folder(tmp_path / "afile")


def test_output_folder_read_only_is_refused_by_a_real_probe(tmp_path):
    with read_only_folder(tmp_path / "ro") as ro:
        # as root os.access says yes: only creating a file tells the truth
        with pytest.raises(MoorelabError, match=r"--out .*ro/new: cannot write in .*ro \("):
            check_output_folder(ro / "new")
        with pytest.raises(MoorelabError, match=r"--out .*ro: cannot write in .*ro \("):
            check_output_folder(ro)
        with pytest.raises(MoorelabError, match=r"--plot .*ro/a.png: cannot write in .*ro \("):
            check_output_file(ro / "a.png", "--plot")
        assert os.listdir(ro) == []


def test_output_folder_check_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    assert check_output_folder(target) == target
    assert os.listdir(tmp_path) == []  # neither the missing parents nor a probe file remain
    (tmp_path / "out").mkdir()
    check_output_folder(tmp_path / "out")
    assert os.listdir(tmp_path) == ["out"] and os.listdir(tmp_path / "out") == []


def test_output_file_and_input_paths(tmp_path):
    with pytest.raises(MoorelabError, match=r"--plot .*: is a folder; expected a file path"):
        check_output_file(tmp_path, "--plot")
    with pytest.raises(MoorelabError, match=r"--text .*: is a folder; expected a file"):
        require_file(tmp_path, "--text")
    with pytest.raises(MoorelabError, match=r"--facts .*nope.csv: no such file"):
        require_file(tmp_path / "nope.csv", "--facts")
    (tmp_path / "f").write_text("x")
    with pytest.raises(MoorelabError, match=r"--data .*f: is a file; expected a folder"):
        require_folder(tmp_path / "f", "--data")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -0.1])
def test_machine_price_must_be_finite_and_positive(bad):
    with pytest.raises(MoorelabError, match=r"--usd-per-hour .*: must be a finite number > 0"):
        check_usd_per_hour(bad)
    assert check_usd_per_hour(0.25) == 0.25


def test_text_mostly_control_characters_is_refused(tmp_path):
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"\x00" * 900 + b"Fair is foul, and foul is fair.\n" * 3)
    with pytest.raises(DataError, match=r"nul.txt: 90\.4% of its 996 characters are control characters .*U\+0000 x900.*more than 1%"):
        read_text_file(nul)
    with pytest.raises(DataError, match=r"is a folder; expected a text file"):
        read_text_file(tmp_path)
    # prose with a form feed per page stays under the threshold and is read unchanged
    page = "Fair is foul, and foul is fair.\n" * 4 + "\f"
    ok = tmp_path / "pages.txt"
    ok.write_text(page * 10)
    assert page.count("\f") / len(page) < MAX_CONTROL_SHARE
    assert read_text_file(ok).text == page * 10
    # one control character too many crosses it
    n = 1000
    edge = tmp_path / "edge.txt"
    edge.write_text("\x1b" * 11 + "a" * (n - 11))
    with pytest.raises(DataError, match=r"edge.txt: 1\.1% .*U\+001B x11"):
        read_text_file(edge)


def _facts_with(tmp_path: Path, edit) -> Path:
    lines = FACTS_PATH.read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    rows = edit(header, rows)
    p = tmp_path / "facts.csv"
    p.write_text("\n".join([lines[0]] + [",".join(r) for r in rows]) + "\n")
    return p


def test_facts_with_two_usable_rows_is_refused_after_listing_every_row_left_out(tmp_path):
    def edit(header, rows):
        compute = header.index("training_compute_flop")
        bad = list(rows[2])
        bad[compute] = "lots"
        blank = list(rows[3])
        blank[compute] = ""
        return [rows[0], rows[1], bad, blank, rows[0]]

    path = _facts_with(tmp_path, edit)
    seen = []
    with pytest.raises(DataError, match=r"facts.csv: 2 usable row\(s\) with training compute of 5 read \(3 left out\); "
                                        r"the trend fit needs at least 3"):
        facts_for_fit(path, report=seen.extend)
    assert [(d.row, d.reason) for d in seen] == [
        (4, "training_compute_flop not a number ('lots')"),
        (5, "training compute missing (not in the fit)"),
        (6, "duplicate of row 2"),
    ]


def test_run_inputs_print_the_facts_rows_left_out(tmp_path):
    def edit(header, rows):
        compute = header.index("training_compute_flop")
        bad = list(rows[2])
        bad[compute] = "-1"
        return rows[:2] + [bad] + rows[3:]

    path = _facts_with(tmp_path, edit)
    con = Console(record=True, width=80)
    got = check_run_inputs(model="smollm2-135m", text=None, facts=path, out=tmp_path / "out", usd_per_hour=0.1,
                           console=con)
    printed = con.export_text()
    model = FACTS_PATH.read_text().splitlines()[3].split(",")[0]
    assert f"facts {path}: row 4 ({model}) left out: training_compute_flop <= 0 or infinite (-1.0)" in printed
    assert [d.row for d in got.facts_left_out] == [4]
    assert got.text.text.startswith("Macbeth") and not (tmp_path / "out").exists()
    # the embedded table: every row used, nothing printed
    con = Console(record=True, width=80)
    assert check_run_inputs(model="smollm2-135m", text=None, facts=None, out=tmp_path / "out", usd_per_hour=0.1,
                            console=con).facts_left_out == []
    assert con.export_text() == ""


def test_model_argument_checked_without_loading(tmp_path):
    with pytest.raises(ModelLoadError, match=r"a folder without config.json"):
        model_source(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match=r"no \*.safetensors weights"):
        model_source(str(tmp_path))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ModelLoadError, match=r"fake.gguf: not a GGUF file"):
        model_source(str(fake))
    txt = tmp_path / "model.bin"
    txt.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"model.bin: expected a Hugging Face folder or a .gguf file"):
        model_source(str(txt))
    with pytest.raises(ModelLoadError, match=r"unknown model 'gpt-17'"):
        model_source("gpt-17")
