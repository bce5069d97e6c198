"""Thin, token-safe glue to ``huggingface_hub``: repo-id checks, offline mode, the API client, error translation.

A token is only ever handed to ``huggingface_hub`` (argument, ``HF_TOKEN`` or the login stored by ``hf auth login``
are resolved by the library); xmm never prints, logs or writes it, and error messages are built from the Hub's
responses, which do not contain it.
"""

from __future__ import annotations

import os
from typing import Any

from xmm.errors import CheckpointError, ConfigError, MissingDependencyError, ModelNotFoundError

REPO_TYPE = "model"


def require_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as e:  # a core dependency, but keep the message useful if someone removed it
        raise MissingDependencyError("huggingface_hub", command="pip install huggingface_hub", purpose="the Hub") from e
    return huggingface_hub


def is_repo_id(text: str) -> bool:
    """True when ``text`` is a syntactically valid Hub repo id (``name`` or ``namespace/name``)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not is_repo_id(repo_id):
        raise ConfigError(f"{repo_id!r} is not a Hub repo id (expected 'name' or 'namespace/name')", field="repo_id")
    return repo_id


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now; huggingface_hub reads it once, at import."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The hub cache folder a download uses: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE``/``HF_HOME``)."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def make_api(token: str | bool | None = None) -> Any:
    """An ``HfApi`` client; ``token=None`` lets huggingface_hub find ``HF_TOKEN`` or the stored login."""
    from huggingface_hub import HfApi

    from xmm import __version__

    return HfApi(token=token, library_name="xmm", library_version=__version__)


def translate_upload_error(exc: Exception, repo_id: str) -> CheckpointError:
    """An upload failure as a :class:`CheckpointError` that says what to do."""
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return CheckpointError(f"cannot upload to '{repo_id}': HF_HUB_OFFLINE is set; unset it to push")
    if isinstance(exc, LocalTokenNotFoundError):
        return CheckpointError(f"cannot upload to '{repo_id}': not logged in; set HF_TOKEN or run `hf auth login`")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status in (401, 403):
            return CheckpointError(
                f"cannot upload to '{repo_id}': the Hub refused the credentials (HTTP {status}); check that the token "
                "has write access to this namespace (HF_TOKEN or `hf auth login`)"
            )
        return CheckpointError(f"cannot upload to '{repo_id}': {_first_line(exc)}")
    return CheckpointError(f"cannot upload to '{repo_id}': {type(exc).__name__}: {_first_line(exc)}")


def translate_download_error(exc: Exception, repo_id: str, revision: str | None, cache_dir: str | None) -> Exception:
    """A download failure as :class:`ModelNotFoundError` / :class:`CheckpointError` that says what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    what = f"'{repo_id}'" + (f" at revision '{revision}'" if revision else "")
    if isinstance(exc, IncompleteSnapshotError):
        return CheckpointError(f"the cached copy of {what} is incomplete; download it again with network access "
                               f"(`hf download {repo_id}`): {_first_line(exc)}")
    if isinstance(exc, LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if offline() else "downloads are off (local_files_only) or the Hub is unreachable"
        return ModelNotFoundError(
            f"{what} is not in the Hugging Face cache ({cache_root(cache_dir)}) and {why}. Download it once with "
            f"network access (`hf download {repo_id}` or from_pretrained), then it loads offline."
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(f"{what}: the revision does not exist on the Hub")
    if isinstance(exc, (RepositoryNotFoundError, GatedRepoError)):
        return ModelNotFoundError(f"{what}: no such repo on the Hub, or it is private/gated and the token (HF_TOKEN or "
                                  "`hf auth login`) has no access")
    if isinstance(exc, HfHubHTTPError):
        return CheckpointError(f"cannot download {what}: {_first_line(exc)}")
    return CheckpointError(f"cannot download {what}: {type(exc).__name__}: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
