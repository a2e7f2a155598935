"""Where ddpmkit caches decoded datasets, dataset statistics and downloads."""

import os
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``$DDPMKIT_CACHE``, else ``$XDG_CACHE_HOME/ddpmkit`` (``~/.cache/ddpmkit``);
    ``~`` is expanded in each."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get("DDPMKIT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "ddpmkit"
    return Path(root).expanduser()
