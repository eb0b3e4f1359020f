"""Where moorelab keeps derived files (converted checkpoints, fetched data).

Nothing is written inside the repository: the cache lives in ``$MOORELAB_CACHE`` or, by
default, ``$XDG_CACHE_HOME/moorelab`` (``~/.cache/moorelab``).
"""

from __future__ import annotations

import os
from pathlib import Path


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
