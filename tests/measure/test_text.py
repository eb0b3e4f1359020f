import pytest

from moorelab.errors import DataError
from moorelab.measure.text import default_text, play_to_plain_text, read_text_file, take_prefix


def test_play_markdown_becomes_plain_text():
    md = "# Macbeth\n\n## ACT I\n\n_Thunder. Enter three Witches_\n\n**First Witch**  \nWhen shall we three meet again  \n"
    assert play_to_plain_text(md) == "Macbeth\n\nACT I\n\nThunder. Enter three Witches\n\nFirst Witch\nWhen shall we three meet again\n"


def test_default_text_is_a_real_play():
    t = default_text()
    assert t.text.startswith("Macbeth")
    assert "Fair is foul, and foul is fair" in t.text
    assert t.n_bytes == len(t.text.encode("utf-8")) > 90_000


def test_take_prefix_cuts_at_line_end():
    t = default_text()
    p = take_prefix(t, 1000)
    assert len(p.text) <= 1000 and p.text.endswith("\n")
    assert "first" in p.description


def test_read_text_file_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(DataError, match="empty.txt: text file is empty"):
        read_text_file(empty)
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.txt: not valid UTF-8 \(byte 3"):
        read_text_file(bad)
    with pytest.raises(DataError, match="missing.txt: text file not found"):
        read_text_file(tmp_path / "missing.txt")
