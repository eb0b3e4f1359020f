"""``moorelab data fetch NAME``: download public trend data into the cache, sha256 recorded.

Files are downloaded from their pinned GitHub commits (:mod:`moorelab.law.sources`) into
``cache_dir()/trends/<folder>/<file>`` -- the same layout as ``../shared/data/trends`` -- and
each file's sha256, size, origin and time are written to ``cache_dir()/trends/MANIFEST.json``.
A file already in the cache whose content still matches its recorded sha256 is not fetched
again, nor copied again from a ``from_path`` copy with the same sha256 (status "cached";
``force=True`` re-fetches). ``from_path`` copies a local copy instead of downloading
(offline use). Nothing else in moorelab touches the network.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from moorelab.errors import DataError, MoorelabError
from moorelab.law.sources import DATASETS, RAW_BASE, SourceFile, dataset_files
from moorelab.paths import sha256_file

MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class FetchResult:
    """One file placed in the cache.

    Attributes:
        relpath: ``folder/file``; path: absolute cache path; sha256: hex digest; bytes: size.
        origin: URL or local path it came from; status: "downloaded", "copied" or "cached".
        matches_reference: sha256 equals the digest recorded in the sources table
            (None when the table has none).
    """

    relpath: str
    path: str
    sha256: str
    bytes: int
    origin: str
    status: str
    matches_reference: bool | None


def trends_cache_dir() -> Path:
    """``cache_dir()/trends`` (created on demand)."""
    from moorelab.paths import cache_dir

    p = cache_dir() / "trends"
    p.mkdir(parents=True, exist_ok=True)
    return p


def read_manifest(dest: Path) -> dict:
    """The cache manifest: relpath -> {sha256, bytes, origin, fetched_at}."""
    p = dest / MANIFEST
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DataError(f"{p}: corrupt manifest (delete it and fetch again)") from None


def _write_manifest(dest: Path, manifest: dict) -> None:
    tmp = dest / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    tmp.replace(dest / MANIFEST)


def _locate_local(src: SourceFile, root: Path, single: bool) -> Path:
    for cand in (root / src.folder / src.file, root / src.file):
        if cand.is_file():
            return cand
    if single and root.is_file():
        return root
    raise DataError(f"{root}: no local copy of {src.relpath} (expected {root / src.relpath} "
                    f"or {root / src.file})")


def _download(url: str, target: Path, timeout: float) -> None:
    req = urllib.request.Request(url, headers={"User-Agent": "moorelab-data-fetch"})
    tmp = None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(resp, out)
        os.replace(tmp, target)
        tmp = None
    except urllib.error.HTTPError as exc:
        raise MoorelabError(f"download failed: {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MoorelabError(f"download failed: {url}: {reason}") from None
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def fetch_dataset(name: str, *, from_path: str | os.PathLike | None = None,
                  base_url: str = RAW_BASE, dest: str | os.PathLike | None = None,
                  force: bool = False, timeout: float = 60.0) -> list[FetchResult]:
    """Fetch every file of dataset ``name`` (see ``sources.DATASETS``; "all" = every file).

    Args:
        name: dataset name.
        from_path: local copy to read instead of downloading: a directory laid out like
            ``shared/data/trends``, a directory holding the files, or (one-file datasets) the file.
        base_url: replaces ``https://raw.githubusercontent.com`` (a mirror or a test server).
        dest: cache root (default ``cache_dir()/trends``).
        force: re-fetch even if the cached copy matches its recorded sha256.
        timeout: seconds per HTTP request.

    Returns:
        One :class:`FetchResult` per file.

    Raises:
        MoorelabError: unknown dataset name, download failure (names the URL and status).
        DataError: local copy missing a file.
    """
    try:
        files = dataset_files(name)
    except KeyError:
        raise MoorelabError(f"unknown dataset {name!r}; known: all, "
                            + ", ".join(sorted(DATASETS))) from None
    root = Path(dest) if dest is not None else trends_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(root)
    results = []
    local_root = Path(from_path) if from_path is not None else None
    if local_root is not None and not local_root.exists():
        raise DataError(f"{local_root}: no such file or directory")
    for src in files:
        target = root / src.folder / src.file
        target.parent.mkdir(parents=True, exist_ok=True)
        rec = manifest.get(src.relpath)
        verified = bool(not force and rec and target.is_file() and sha256_file(target) == rec.get("sha256"))
        path = _locate_local(src, local_root, single=len(files) == 1) if local_root is not None else None
        if verified and (path is None or sha256_file(path) == rec.get("sha256")):
            # the cached copy matches its recorded sha256 (and the --from copy, if any): nothing to do
            status, origin = "cached", rec.get("origin", "")
        elif path is not None:
            if path.resolve() != target.resolve():
                shutil.copyfile(path, target)
            status, origin = "copied", str(path.resolve())
        else:
            origin = src.url(base_url)
            _download(origin, target, timeout)
            status = "downloaded"
        digest = sha256_file(target)
        size = target.stat().st_size
        if status != "cached":
            manifest[src.relpath] = {
                "sha256": digest, "bytes": size, "origin": origin,
                "fetched_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "upstream": f"github.com/{src.repo}@{src.commit}:{src.upstream_path}"}
            _write_manifest(root, manifest)
        results.append(FetchResult(src.relpath, str(target), digest, size, origin, status,
                                   None if src.sha256 is None else digest == src.sha256))
    return results


def results_to_dicts(results: list[FetchResult]) -> list[dict]:
    return [asdict(r) for r in results]
