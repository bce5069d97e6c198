"""Small file helpers shared by checkpoints, caches and bridges.

Failures that come from the machine rather than from xmm (disk full, a read-only folder, a file where a folder should
be, no permission) leave the writing helpers as :class:`~xmm.errors.StorageError` naming the path, so that commands
report them as one line instead of a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from xmm.errors import StorageError

# errno values that describe the environment (space, permissions, folder layout), not a bug
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                                errno.EISDIR, errno.EEXIST, errno.EFBIG, errno.ENAMETOOLONG, errno.EMLINK, errno.EIO})


def storage_error(e: OSError, path: str | os.PathLike[str], action: str = "write") -> StorageError:
    """A :class:`StorageError` for ``e`` met while doing ``action`` on ``path`` (disk full, read-only, ...)."""
    reason = e.strerror or str(e)
    hint = ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "; free some space (or point $XMM_HOME / the output folder elsewhere) and run again"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "; choose a writable folder"
    err = StorageError(f"cannot {action} {path}: {reason}{hint}")
    err.errno = e.errno  # only the number: OSError would print its own "[Errno N] ..." text with strerror/filename
    return err


# libraries written in Rust or C++ (safetensors, tokenizers) report I/O failures in their own error types
_FOREIGN_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def environment_errno(e: BaseException) -> int | None:
    """The errno of an environmental failure behind ``e`` (an ``OSError``, or a library error that quotes
    ``(os error N)``), or None."""
    if isinstance(e, OSError):
        return e.errno if e.errno in ENVIRONMENT_ERRNOS else None
    m = _FOREIGN_OS_ERROR.search(str(e))
    code = int(m.group(1)) if m else None
    return code if code in ENVIRONMENT_ERRNOS else None


@contextmanager
def storage_errors(path: str | os.PathLike[str], action: str = "write") -> Iterator[None]:
    """Turn environmental failures raised inside the block (``OSError``, or a library's error quoting one) into
    :class:`StorageError` naming ``path``."""
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        code = environment_errno(e)
        if code is None:
            raise
        if not isinstance(e, OSError):
            e = OSError(code, os.strerror(code))
        raise storage_error(e, getattr(e, "filename", None) or path, action) from e


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temp file beside ``path``, fsync it and rename it into place.

    A reader (or a run killed mid-write) never sees half a file: the rename is atomic on POSIX. Disk full, read-only
    folders and the like raise :class:`StorageError` naming ``path``.
    """
    path = Path(path)
    with storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flush every file under ``root`` (and the folders themselves) to disk, so that a rename publishing ``root``
    never exposes files whose content is still only in the page cache."""
    root = Path(root)
    for p in [*root.rglob("*"), root]:
        if p.is_symlink():
            continue
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            _fsync_dir(p)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not let a folder be opened; the files were flushed already
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish_dir(
    staging: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    if_exists: Literal["replace", "keep"] = "replace",
    keep: Callable[[str], bool] | None = None,
) -> Path:
    """Make the finished folder ``staging`` (a sibling of ``target``, same filesystem) become ``target``.

    Its files are fsynced first, then it is renamed into place, so a reader sees the old folder or the new one, never
    a mix. ``if_exists="replace"``: an existing ``target`` is swapped out and deleted; top-level entries of the old
    folder for which ``keep(name)`` is true, and that the new folder does not have, are moved into the new one (files
    others wrote beside a checkpoint). ``if_exists="keep"``: an existing ``target`` (another process finished the
    same work first) wins and ``staging`` is deleted. Returns ``target``.
    """
    staging, target = Path(staging), Path(target)
    if staging.parent.resolve() != target.parent.resolve():
        raise ValueError(f"{staging} must be in the folder of {target} for the rename to be atomic")
    fsync_tree(staging)
    if if_exists == "keep" or not target.exists():
        try:
            os.rename(staging, target)  # fails (never replaces) when the target exists and is not empty
        except OSError:
            if not target.exists():
                raise
            if if_exists == "keep":
                shutil.rmtree(staging, ignore_errors=True)
                return target
        else:
            _fsync_dir(target.parent)
            return target
    if not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a folder")
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    if keep is not None:
        # moved after the swap: a failure before it leaves them in the old folder, never lost with the staging one
        for entry in old.iterdir():
            if keep(entry.name) and not (target / entry.name).exists():
                os.replace(entry, target / entry.name)
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
    return target


@contextmanager
def atomic_dir(
    target: str | os.PathLike[str],
    *,
    if_exists: Literal["replace", "keep"] = "replace",
    keep: Callable[[str], bool] | None = None,
) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target`` to build into; on a clean exit it is published as ``target``
    (see :func:`publish_dir`), on an exception it is deleted and ``target`` is left as it was. Environmental
    failures, also those of the block (disk full while writing into the folder), raise :class:`StorageError`."""
    target = Path(target)
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            yield staging
            publish_dir(staging, target, if_exists=if_exists, keep=keep)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def xmm_home() -> Path:
    """Where xmm keeps converted models and caches: ``$XMM_HOME``, default ``~/.cache/xmm``. A file there, or a
    folder that cannot be created, raises :class:`StorageError` (a read-only home is fine until something is
    written into it; the writer then says so)."""
    home = Path(os.environ.get("XMM_HOME") or Path.home() / ".cache" / "xmm")
    if os.path.lexists(home) and not home.is_dir():
        raise StorageError(f"$XMM_HOME {home} is not a folder; point XMM_HOME at a folder xmm may write into")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create $XMM_HOME {home}: {e.strerror or e}; point XMM_HOME at a folder xmm may "
                           "write into") from None
    return home
