"""Pulling checkpoints and bridges from the Hub through the Hugging Face cache (works offline once cached)."""

from __future__ import annotations

import os
from pathlib import Path

from xmm.bridges.base import CONFIG_NAME as BRIDGE_CONFIG_NAME
from xmm.errors import CheckpointError
from xmm.hub._hf import REPO_TYPE, check_repo_id, is_repo_id, offline, require_hub, translate_download_error
from xmm.model.checkpoint import MANIFEST as MANIFEST_NAME


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
    hub = require_hub()
    from xmm import __version__

    only_local = bool(local_files_only) or offline()
    try:
        path = hub.snapshot_download(
            repo_id,
            repo_type=REPO_TYPE,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=only_local,
            allow_patterns=allow_patterns,
            library_name="xmm",
            library_version=__version__,
        )
    except Exception as e:  # translated into xmm errors with what to do next
        raise translate_download_error(e, repo_id, revision, None if cache_dir is None else os.fspath(cache_dir)) from e
    return Path(path)


def snapshot_checkpoint(repo_id: str, *, revision: str | None = None, **kwargs: object) -> Path:
    """The cached folder of an xmm checkpoint repo (it must hold ``xmm.json``); see :func:`snapshot`."""
    path = snapshot(repo_id, revision=revision, **kwargs)  # type: ignore[arg-type]
    if not (path / MANIFEST_NAME).is_file():
        found = sorted(p.name for p in path.iterdir())
        raise CheckpointError(
            f"'{repo_id}' is not an xmm checkpoint: it has no {MANIFEST_NAME} (found: {', '.join(found) or 'nothing'})"
            + (" - it looks like a single bridge; load it with Bridge.from_pretrained" if BRIDGE_CONFIG_NAME in found else "")
        )
    return path


def resolve_bridge_dir(repo_id: str, *, revision: str | None = None, subfolder: str | None = None, **kwargs: object) -> Path:
    """The cached folder of a bridge pushed alone, or of ``subfolder`` (e.g. ``bridges/image``) of a checkpoint repo.

    Called by :meth:`xmm.bridges.base.Bridge.from_pretrained` for anything that is not a local bridge folder.
    """
    if Path(repo_id).exists() or not is_repo_id(repo_id):
        raise CheckpointError(
            f"{repo_id}: neither a bridge folder (no {BRIDGE_CONFIG_NAME}) nor a Hub repo id ('namespace/name')"
        )
    sub = subfolder.strip("/") if subfolder else None
    patterns = [f"{sub}/*"] if sub else None
    path = snapshot(repo_id, revision=revision, allow_patterns=patterns, **kwargs)  # type: ignore[arg-type]
    folder = path / sub if sub else path
    if (folder / BRIDGE_CONFIG_NAME).is_file():
        return folder
    bridges = sorted(p.parent.relative_to(path).as_posix() for p in path.glob(f"bridges/*/{BRIDGE_CONFIG_NAME}"))
    hint = f"; it is a checkpoint - pass subfolder= one of {bridges}" if bridges and not sub else ""
    where = f"'{repo_id}'" + (f" folder '{sub}'" if sub else "")
    raise CheckpointError(f"{where} holds no bridge ({BRIDGE_CONFIG_NAME} is missing){hint}")
