"""Typed errors of the data readers; each names the file (and line, element or row) and the field at fault.

Every class carries ``kind``: the bad-sample category a dataset counts it under when it meets the sample.
"""

from __future__ import annotations

from xmm.errors import XmmError


class DataError(XmmError, ValueError):
    """A record (or a whole source) cannot be used; ``source`` is ``file:line`` (or ``file``), ``field`` the key."""

    kind = "invalid_example"

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None) -> None:
        self.message = message
        self.source = source
        self.field = field
        where = f"{source}: " if source else ""
        if field:
            where += f"field '{field}': "
        super().__init__(f"{where}{message}")

    def at(self, source: str) -> DataError:
        """The same error located at ``source`` (readers raise without knowing the line; the dataset adds it)."""
        err = type(self)(self.message, source=source, field=self.field)
        err.__cause__ = self.__cause__
        return err


class InvalidJSONError(DataError):
    """A line or element is not JSON (or not UTF-8)."""

    kind = "invalid_json"


class RecordTooLargeError(DataError):
    """A record, its text or an inline media item is over a :class:`~xmm.data.limits.DataLimits` limit."""

    kind = "too_large"


class NestingTooDeepError(DataError):
    """A record nests JSON arrays/objects deeper than ``DataLimits.max_json_depth``."""

    kind = "too_deep"


class UnsafePathError(DataError):
    """A media path leaves the dataset's folder or media root, or is a URL; it is never opened."""

    kind = "unsafe_path"


class MediaFileError(DataError):
    """A media path inside the root names nothing, or something that is not a regular file (never opened)."""

    kind = "unreadable_media"


class SourceError(DataError):
    """A whole source cannot be opened: unknown format, unreadable file, a JSON file that is not a list."""
