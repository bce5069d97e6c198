"""Where pretrained things come from: a local folder, or a Hugging Face Hub repo id resolved to its cached snapshot.

Offline by default: :func:`resolve` downloads only when the caller says the user asked for the network
(``download=True``) and ``HF_HUB_OFFLINE`` is not set; otherwise only the Hugging Face cache is read, so a missing
model fails at once with :class:`~xmm.errors.ModelNotFoundError` saying how to get it, instead of after minutes of
network retries. A token is only ever handed to ``huggingface_hub``, never printed or logged.
"""

from __future__ import annotations

import os
from pathlib import Path

from xmm.errors import CheckpointError, MissingDependencyError, ModelNotFoundError

REPO_TYPE = "model"
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_repo_id(text: str) -> bool:
    """True when ``text`` is a syntactically valid Hub repo id (``name`` or ``namespace/name``); the one test xmm
    uses to tell a repo id from a path."""
    if not isinstance(text, str):
        return False
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def looks_local(text: str) -> bool:
    """True when ``text`` can only mean a local path: not a repo id, or ``a/b`` whose ``a`` is a local folder."""
    if not is_repo_id(text):
        return True
    head, sep, _ = text.partition("/")
    return bool(sep) and Path(head).is_dir()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now; huggingface_hub itself reads it once, at import."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().upper() in _TRUE:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The hub cache folder a download uses: ``cache_dir``, else huggingface_hub's (``HF_HUB_CACHE``/``HF_HOME``)."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve(
    source: str | os.PathLike[str],
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    download: bool = False,
    must_contain: str | None = None,
    what: str = "model",
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """The local folder of ``source``: an existing folder, or the Hugging Face cache snapshot of a Hub repo id.

    ``download``: fetch what the cache lacks (only when the user asked for a Hub model; ignored when
    ``HF_HUB_OFFLINE`` is set). ``subfolder``: a folder inside the repo or local folder (only it is downloaded).
    ``must_contain``: a file name the resulting folder must hold (e.g. ``config.json``), else
    :class:`~xmm.errors.CheckpointError` naming the folders below it that do hold one. ``what`` names the thing in
    messages. Errors: :class:`~xmm.errors.ModelNotFoundError` (no such folder, not cached, no such repo or revision),
    :class:`~xmm.errors.CheckpointError` (incomplete cache, other Hub failures).
    """
    text = os.fspath(source)
    sub = subfolder.strip("/") if subfolder else None
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{text}: is a file; a {what} is a folder")
        return _checked(path, sub, must_contain, what, str(path))
    if looks_local(text):
        raise ModelNotFoundError(f"{text}: no such {what} folder" + ("" if is_repo_id(text) else
                                 " (nor a Hub repo id like 'namespace/name')"))
    patterns = [f"{sub}/*"] if sub else allow_patterns
    root = snapshot(text, revision=revision, download=download, cache_dir=cache_dir, token=token,
                    allow_patterns=patterns)
    where = f"'{text}'" + (f" at revision '{revision}'" if revision else "")
    return _checked(root, sub, must_contain, what, where)


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    token: str | bool | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """The cached snapshot folder of Hub repo ``repo_id`` at ``revision`` (``refs/<revision>`` ->
    ``snapshots/<commit>``), downloading what is missing only when ``download`` and not offline."""
    try:
        import huggingface_hub
    except ImportError as e:  # a core dependency; keep the message useful if someone removed it
        raise MissingDependencyError("huggingface_hub", purpose="loading from the Hugging Face Hub") from e
    from xmm._version import __version__

    only_local = not download or hub_offline()
    try:
        path = huggingface_hub.snapshot_download(
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
    except Exception as e:  # translated into xmm errors that say what to do next
        raise translate_download_error(e, repo_id, revision, None if cache_dir is None else os.fspath(cache_dir),
                                       download=download) from e
    return Path(path)


def snapshot_commit(folder: str | os.PathLike[str]) -> str | None:
    """The commit hash of a Hugging Face cache snapshot folder (``.../snapshots/<commit>[/sub]``), else None."""
    parts = Path(folder).parts
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "snapshots" and i > 0 and parts[i - 1].startswith("models--"):
            return parts[i + 1]
    return None


def _checked(root: Path, sub: str | None, must_contain: str | None, what: str, where: str) -> Path:
    folder = root / sub if sub else root
    if must_contain is None or (folder / must_contain).is_file():
        return folder
    if not folder.is_dir():
        raise CheckpointError(f"{where} has no folder '{sub}'")
    # two levels down is where a checkpoint keeps its parts (bridges/<name>/config.json); deeper is not searched
    below = [*root.glob(f"*/{must_contain}"), *root.glob(f"*/*/{must_contain}")]
    found = sorted(p.parent.relative_to(root).as_posix() for p in below if p.is_file())
    hint = f"; folders that hold one: {found} (pass subfolder=)" if found and not sub else ""
    inside = f" folder '{sub}'" if sub else ""
    raise CheckpointError(f"{where}{inside} holds no {what} ({must_contain} is missing){hint}")


def translate_download_error(exc: Exception, repo_id: str, revision: str | None, cache_dir: str | None, *,
                             download: bool = True) -> Exception:
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
                               f"(`hf download {repo_id}`): {first_line(exc)}")
    if isinstance(exc, LocalEntryNotFoundError):
        if hub_offline():
            why = "HF_HUB_OFFLINE is set"
        elif not download:
            why = "xmm does not download it unasked"
        else:
            why = "the Hub is unreachable"
        return ModelNotFoundError(
            f"{what} is not in the Hugging Face cache ({cache_root(cache_dir)}) and {why}. Download it once with "
            f"network access (`hf download {repo_id}`), then it loads offline."
        )
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(f"{what}: the revision does not exist on the Hub")
    if isinstance(exc, (RepositoryNotFoundError, GatedRepoError)):
        return ModelNotFoundError(f"{what}: no such repo on the Hub, or it is private/gated and the token (HF_TOKEN or "
                                  "`hf auth login`) has no access")
    if isinstance(exc, HfHubHTTPError):
        return CheckpointError(f"cannot download {what}: {first_line(exc)}")
    return CheckpointError(f"cannot download {what}: {type(exc).__name__}: {first_line(exc)}")


def first_line(exc: Exception) -> str:
    """The first line of an exception's message (Hub errors append long server details)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
