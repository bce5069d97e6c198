"""Thin, token-safe glue to ``huggingface_hub`` for uploads: repo-id checks, the API client, error translation.

A token is only ever handed to ``huggingface_hub`` (argument, ``HF_TOKEN`` or the login stored by ``hf auth login``
are resolved by the library); xmm never prints, logs or writes it, and error messages are built from the Hub's
responses, which do not contain it.
"""

from __future__ import annotations

from typing import Any

from xmm.errors import CheckpointError, ConfigError
from xmm.pretrained import REPO_TYPE, first_line, hub_offline, is_repo_id

__all__ = ["REPO_TYPE", "check_repo_id", "hub_offline", "make_api", "translate_upload_error"]


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not is_repo_id(repo_id):
        raise ConfigError(f"{repo_id!r} is not a Hub repo id (expected 'name' or 'namespace/name')", field="repo_id")
    return repo_id


def make_api(token: str | bool | None = None) -> Any:
    """An ``HfApi`` client; ``token=None`` lets huggingface_hub find ``HF_TOKEN`` or the stored login."""
    from huggingface_hub import HfApi

    from xmm._version import __version__

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
        return CheckpointError(f"cannot upload to '{repo_id}': {first_line(exc)}")
    return CheckpointError(f"cannot upload to '{repo_id}': {type(exc).__name__}: {first_line(exc)}")

