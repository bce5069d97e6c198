"""Paths confined to a folder: media named by a dataset or a chat message resolve inside their root.

A manifest downloaded from anywhere must not make training or evaluation read ``/etc/passwd``: relative paths resolve
against the root (the manifest's folder or a declared media root), and the real path (symlinks followed) must stay
inside it. ``../`` escapes, absolute paths elsewhere, ``~``, ``file://`` and other URLs are refused unless the caller
opts in with ``allow_outside`` (URLs other than ``file://`` are never fetched). Only metadata is consulted
(``realpath``, ``stat``): a refused or special file is never opened, and no message quotes a file's content.

This is the one rule: :class:`xmm.data.paths.MediaRoot` (dataset readers) and :mod:`xmm.model.messages` (chat
examples with a ``base_dir``) both apply it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from xmm.errors import UnsafePathError
from xmm.limits import check_file

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHOWN = 200  # characters of a refused path quoted in a message


def shown_path(value: str) -> str:
    """``value`` cut to a readable length for messages."""
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


@dataclass(frozen=True)
class PathRoot:
    """Resolves path strings against ``root`` (a folder), refusing what leaves it unless ``allow_outside``."""

    root: Path
    allow_outside: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(os.path.realpath(self.root)))

    def contains(self, real: str) -> bool:
        """True when the real path ``real`` is ``root`` or below it."""
        root = str(self.root)
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    def confine(self, value: str | os.PathLike[str], *, modality: str | None = None) -> Path:
        """The real path named by ``value`` (relative to ``root``), or :class:`UnsafePathError`; nothing is opened or
        stat'ed beyond what ``realpath`` reads (symlinks)."""
        value = os.fspath(value)
        if not value or "\x00" in value:
            raise UnsafePathError("empty path or a NUL byte in the path", modality=modality)
        shown = shown_path(value)
        if _SCHEME.match(value):
            if value[:7].lower() != "file://":
                raise UnsafePathError(f"{shown!r}: URLs are not fetched; give a local path", modality=modality)
            if not self.allow_outside:
                raise UnsafePathError(f"{shown!r}: file:// URLs are refused (set allow_outside_paths to accept them)",
                                      modality=modality)
            value = value[7:]
        if value.startswith("~"):
            if not self.allow_outside:
                raise UnsafePathError(f"{shown!r}: '~' paths are refused (set allow_outside_paths to accept them)",
                                      modality=modality)
            value = os.path.expanduser(value)
        joined = os.path.join(self.root, value)  # an absolute value replaces the root
        try:
            real = os.path.realpath(joined)
        except (OSError, ValueError) as e:  # a symlink loop with strict resolution, an unencodable name
            raise UnsafePathError(f"{shown!r}: cannot resolve the path ({e})", modality=modality) from None
        if not self.allow_outside and not self.contains(real):
            raise UnsafePathError(f"{shown!r} resolves outside the media root {self.root} (set media_root, or "
                                  "allow_outside_paths to accept it)", modality=modality)
        return Path(real)

    def resolve(self, value: str | os.PathLike[str], *, modality: str | None = None) -> Path:
        """:meth:`confine`, then :func:`xmm.limits.check_file`: the path must name a regular file within
        ``modality``'s size limit (``MediaError`` / ``MediaTooLargeError`` otherwise, from ``stat`` alone)."""
        real = self.confine(value, modality=modality)
        check_file(real, modality=modality)
        return real
