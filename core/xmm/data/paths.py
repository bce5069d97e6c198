"""Media paths confined to a dataset's folder (or its declared media root).

A dataset downloaded from anywhere must not make training read ``/etc/passwd``: relative paths resolve against the
root, and the resolved real path (symlinks followed) must stay inside it. ``../`` escapes, absolute paths elsewhere,
``~``, ``file://`` and other URLs are refused unless the caller opts in with ``allow_outside_paths`` (URLs other than
``file://`` are never fetched). Only metadata is consulted (``realpath``, ``stat``): a refused or special file is
never opened, and no message quotes a file's content. The rule itself is :class:`xmm.paths.PathRoot` (shared with
chat examples); this class gives its failures the data readers' error types.
"""

from __future__ import annotations

from pathlib import Path

from xmm.data.errors import MediaFileError, RecordTooLargeError, UnsafePathError
from xmm.errors import MediaError, MediaTooLargeError
from xmm.errors import UnsafePathError as _PathRefused
from xmm.limits import check_file
from xmm.paths import PathRoot


class MediaRoot(PathRoot):
    """Resolves media path strings of one source against ``root`` (a folder), refusing what leaves it."""

    def resolve(self, value: str, *, field: str | None = None, modality: str | None = None) -> Path:  # type: ignore[override]
        """The real path of a regular file named by ``value``; raises :class:`UnsafePathError` (refused, never
        touched), :class:`MediaFileError` (missing, a directory, a FIFO, a device...) or
        :class:`RecordTooLargeError` (over ``modality``'s file size limit, from ``stat``)."""
        try:
            real = self.confine(value)
        except _PathRefused as e:
            raise UnsafePathError(e.detail, field=field) from None
        shown = value if len(value) <= 200 else value[:200] + "..."
        try:
            check_file(real, modality=modality)
        except MediaTooLargeError as e:
            raise RecordTooLargeError(f"{shown!r}: {e}", field=field) from None
        except MediaError as e:
            raise MediaFileError(f"{shown!r}: {e}", field=field) from None
        return real
