"""Index files cached in ``$XMM_HOME/data-index``, keyed by the source's real path, size and modification time.

An index is built once per version of a file (a fast scan, see :mod:`xmm.data.scan`) and later memory-mapped, so a
million-record source opens in milliseconds and costs only the pages a run touches. Concurrent builders (DataLoader
workers, ranks) are safe: each writes atomically and the last rename wins with identical content.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xmm.io import atomic_write, xmm_home

log = logging.getLogger(__name__)

INDEX_VERSION = 1


def index_key(path: str | os.PathLike[str], kind: str) -> str:
    """Cache key of ``path``'s index of ``kind``: its real path, size and mtime (any edit makes a new key)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    text = f"{INDEX_VERSION}\0{kind}\0{real}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def index_folder() -> Path | None:
    """``$XMM_HOME/data-index`` or None when it cannot be created (indexes are then kept in memory only)."""
    try:
        folder = xmm_home() / "data-index"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    except OSError as e:
        log.warning("cannot keep data indexes in XMM_HOME (%s); they are rebuilt on every start", e.strerror or e)
        return None


def cached_index(path: str | os.PathLike[str], kind: str, build: Callable[[Path], np.ndarray]) -> np.ndarray:
    """The index of ``path`` (``build(path)`` once, then a memory-mapped read-only array)."""
    folder = index_folder()
    if folder is None:
        return build(Path(path))
    file = folder / f"{index_key(path, kind)}.npy"
    if file.is_file():
        try:
            return np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:  # a damaged cache file is rebuilt, never trusted
            log.warning("rebuilding damaged data index %s: %s", file, e)
    built = build(Path(path))

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, built, allow_pickle=False)

    try:
        atomic_write(file, write)
    except OSError as e:
        log.warning("cannot write data index %s: %s", file, e.strerror or e)
        return built
    # the mapped copy: its pages are shared with the page cache and only those a run touches are resident
    return np.load(file, mmap_mode="r", allow_pickle=False)
