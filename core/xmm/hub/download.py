"""Pulling checkpoints from the Hub through the Hugging Face cache (works offline once cached); one bridge is
``xmm.registry.load_bridge(repo_id, subfolder=...)``.

These are explicit Hub calls, so they download what the cache lacks unless ``HF_HUB_OFFLINE`` is set or
``local_files_only=True``; the lookup itself is :mod:`xmm.pretrained`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from xmm import pretrained
from xmm.errors import CheckpointError
from xmm.hub._hf import check_repo_id
from xmm.persist import CONFIG_NAME as BRIDGE_CONFIG_NAME
from xmm.persist.manifest import MANIFEST as MANIFEST_NAME


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """The local folder of ``repo_id`` at ``revision`` in the Hugging Face cache, downloading what is missing.

    With ``HF_HUB_OFFLINE=1`` (read at call time) or ``local_files_only=True`` nothing is downloaded: the cached
    snapshot (``refs/<revision>`` -> ``snapshots/<commit>``) is used, or :class:`~xmm.errors.ModelNotFoundError`
    says how to get it.
    """
    check_repo_id(repo_id)
    return pretrained.snapshot(repo_id, revision=revision, download=not local_files_only, cache_dir=cache_dir,
                               token=token, allow_patterns=allow_patterns)


def snapshot_checkpoint(repo_id: str, *, revision: str | None = None, **kwargs: object) -> Path:
    """The cached folder of an xmm checkpoint repo (it must hold ``xmm.json``); see :func:`snapshot`."""
    path = snapshot(repo_id, revision=revision, **kwargs)  # type: ignore[arg-type]
    if not (path / MANIFEST_NAME).is_file():
        found = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            f"'{repo_id}' is not an xmm checkpoint: it has no {MANIFEST_NAME} (found: {', '.join(found) or 'nothing'})"
            + (" - it looks like a single bridge; load it with xmm.registry.load_bridge" if BRIDGE_CONFIG_NAME in found
               else "")
        )
    return path

