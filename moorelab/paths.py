"""Where moorelab keeps derived files (converted checkpoints, fetched data).

Nothing is written inside the repository: the cache lives in ``$MOORELAB_CACHE`` or, by
default, ``$XDG_CACHE_HOME/moorelab`` (``~/.cache/moorelab``).

The checks every command runs on user-given paths before any work (:func:`require_file`,
:func:`require_folder`, :func:`check_output_folder`, :func:`check_output_file`) live here too:
each error names the option and the path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from moorelab.errors import MoorelabError


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks): how every fetched or cached file is
    checked against its pinned digest.

    Raises:
        OSError: the file cannot be read.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Return the cache root (created on demand).

    Returns:
        Path of the cache directory; ``$MOORELAB_CACHE`` wins over ``$XDG_CACHE_HOME/moorelab``.
    """
    root = os.environ.get("MOORELAB_CACHE")
    if root:
        path = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
        path = Path(xdg) / "moorelab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_file(path: str | os.PathLike, option: str) -> Path:
    """Check that a user-given input path is an existing regular file.

    Args:
        path: the path as given.
        option: the command-line option it came from (e.g. ``"--text"``), named in the error.

    Returns:
        The path as a :class:`Path`.

    Raises:
        MoorelabError: "<option> <path>: no such file" or "... is a folder; expected a file".
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise MoorelabError(f"{option} {p}: is a folder; expected a file")
    if not p.exists():
        raise MoorelabError(f"{option} {p}: no such file")
    if not p.is_file():
        raise MoorelabError(f"{option} {p}: not a regular file")
    return p


def require_folder(path: str | os.PathLike, option: str) -> Path:
    """Check that a user-given input path is an existing folder (the error names ``option``)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MoorelabError(f"{option} {p}: no such folder")
    if not p.is_dir():
        raise MoorelabError(f"{option} {p}: is a file; expected a folder")
    return p


def _probe(folder: Path) -> str | None:
    """Create and delete a file in ``folder``; None if that worked, else the OS's reason.

    A real probe, not :func:`os.access`: as root, ``os.access`` says yes to read-only bind mounts,
    immutable folders and full disks alike.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".moorelab-write-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:  # pragma: no cover - created but cannot delete: not writable for us
        return exc.strerror or str(exc)
    return None


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """Check, before any work, that an output folder can be created and written.

    The folder itself is probed when it exists; so is the nearest existing folder above it, where
    the staging folder (:func:`moorelab.report.results.staged_output`) and any missing parents are
    created. Nothing is left behind.

    Returns:
        The absolute path.

    Raises:
        MoorelabError: the path is a file, a parent on the way is a file, or a probe file cannot
            be created there (naming the folder and the OS's reason).
    """
    out = Path(path).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise MoorelabError(f"{option} {out}: exists and is not a folder")
    above = _nearest_existing(out.parent)
    if not above.is_dir():
        raise MoorelabError(f"{option} {out}: cannot create it: {above} is a file, not a folder")
    for folder in ([out] if out.is_dir() else []) + [above]:
        why = _probe(folder)
        if why is not None:
            raise MoorelabError(f"{option} {out}: cannot write in {folder} ({why})")
    return out


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Check, before any work, that a file (e.g. a plot) can be written at ``path``.

    Raises:
        MoorelabError: the path is a folder, a parent on the way is a file, or the nearest
            existing folder above it is not writable (real probe, see :func:`check_output_folder`).
    """
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise MoorelabError(f"{option} {p}: is a folder; expected a file path")
    above = _nearest_existing(p.parent)
    if not above.is_dir():
        raise MoorelabError(f"{option} {p}: cannot create it: {above} is a file, not a folder")
    why = _probe(above)
    if why is not None:
        raise MoorelabError(f"{option} {p}: cannot write in {above} ({why})")
    return p
