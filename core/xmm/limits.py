"""Resource limits checked before work is done, and safe reads of user-named files.

Every loader of user input (media files, manifests, prompts, checkpoints) asks here first: is the path a regular file
(a FIFO, a device, a socket or a directory is named as what it is and never opened), is it within the size limit (a
4 GiB file is refused from its ``stat``, not after reading it), is a JSON text nested deeper than a parser can take.
Limits have sane defaults and can be raised per process with environment variables (``XMM_MAX_<NAME>``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError, MediaError, MediaTooLargeError

MiB = 1 << 20

# per modality: the largest file read into memory; other modalities get DEFAULT_FILE_BYTES
FILE_BYTES: Mapping[str, int] = {
    "image": 256 * MiB,  # a 120-megapixel PNG is ~100-350 MB; JPEGs are far smaller
    "audio": 512 * MiB,  # ~50 min of 16-bit stereo 44.1 kHz WAV
    "speech": 512 * MiB,
    "video": 4096 * MiB,  # video is demuxed as a stream, never read whole
    "device": 16 * MiB,  # telemetry windows are small; a bigger file is almost surely the wrong input
}
DEFAULT_FILE_BYTES = 256 * MiB
MANIFEST_LINE_BYTES = 1 * MiB  # one training example (JSON) per line; media are referenced, not inlined
JSON_DEPTH = 64  # chat examples nest ~6 deep; Python's json recursion would fail past ~1000
PROMPT_CHARS = 200_000  # checked before tokenising (tokenisers are slow and memory-hungry on huge strings)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(f"XMM_MAX_{name}", "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"must be a positive integer, got {raw!r}", source=f"$XMM_MAX_{name}")
    return value


def max_file_bytes(modality: str | None = None) -> int:
    """The size limit for a file of ``modality`` (``$XMM_MAX_<MODALITY>_FILE_BYTES`` overrides it)."""
    default = FILE_BYTES.get(modality or "", DEFAULT_FILE_BYTES)
    return _env_int(f"{(modality or 'DEFAULT').upper()}_FILE_BYTES", default)


def max_manifest_line_bytes() -> int:
    return _env_int("MANIFEST_LINE_BYTES", MANIFEST_LINE_BYTES)


def max_json_depth() -> int:
    return _env_int("JSON_DEPTH", JSON_DEPTH)


def max_prompt_chars() -> int:
    return _env_int("PROMPT_CHARS", PROMPT_CHARS)


def file_kind(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_file(path: str | os.PathLike[str], *, max_bytes: int | None = None, modality: str | None = None,
               what: str = "file") -> os.stat_result:
    """``stat`` ``path`` and refuse what must not be opened: missing files, symlink loops, directories, FIFOs,
    devices, sockets, and files over ``max_bytes`` (default: :func:`max_file_bytes` of ``modality``).

    Raises :class:`MediaError` / :class:`MediaTooLargeError` naming the path; never opens the file.
    """
    limit = max_file_bytes(modality) if max_bytes is None else max_bytes
    try:
        st = os.stat(path)
    except FileNotFoundError as e:
        raise MediaError(f"{what} not found", source=path, modality=modality) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise MediaError("is a symlink loop", source=path, modality=modality) from e
        if e.errno == errno.ENAMETOOLONG:
            raise MediaError("the path is too long", source=path, modality=modality) from e
        raise MediaError(f"cannot access {what}: {e.strerror or e}", source=path, modality=modality) from e
    kind = file_kind(st.st_mode)
    if kind is not None:
        raise MediaError(f"is {kind}, not a regular {what}", source=path, modality=modality)
    if st.st_size > limit:
        raise MediaTooLargeError(
            f"is {st.st_size:,} bytes, over the limit of {limit:,} for {modality or 'this'} input "
            f"(${'XMM_MAX_' + (modality or 'DEFAULT').upper() + '_FILE_BYTES'} raises it)",
            source=path, modality=modality,
        )
    return st


def read_file(path: str | os.PathLike[str], *, max_bytes: int | None = None, modality: str | None = None,
              what: str = "file") -> bytes:
    """The bytes of a regular file checked by :func:`check_file`, read in chunks and never past the limit (a file
    that grows while it is read, or whose size ``stat`` under-reports, is still refused)."""
    limit = max_file_bytes(modality) if max_bytes is None else max_bytes
    check_file(path, max_bytes=limit, modality=modality, what=what)
    chunks: list[bytes] = []
    total = 0
    try:
        # O_NONBLOCK: a path swapped for a FIFO between stat and open must not block the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if file_kind(os.fstat(f.fileno()).st_mode) is not None:
                raise MediaError(f"is not a regular {what}", source=path, modality=modality)
            while True:
                chunk = f.read(min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise MediaTooLargeError(f"holds more than the limit of {limit:,} bytes", source=path, modality=modality)
    except OSError as e:
        raise MediaError(f"cannot read {what}: {e.strerror or e}", source=path, modality=modality) from e
    return b"".join(chunks)


# strings (with escapes) are skipped so that brackets inside them do not count
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: str | bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (without parsing it; linear time, no recursion)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    data = _JSON_STRING.sub(b'""', data)
    depth = best = 0
    # bytes.translate keeps only brackets, so the loop runs over few characters for ordinary documents
    for ch in data.translate(None, delete=_NOT_BRACKETS):
        if ch in (0x5B, 0x7B):
            depth += 1
            best = max(best, depth)
        else:
            depth -= 1
    return best


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def check_json_depth(text: str | bytes, *, max_depth: int | None = None, source: Any = None, what: str = "JSON") -> None:
    """Refuse a JSON text nested deeper than ``max_depth`` (default :func:`max_json_depth`) before parsing it."""
    limit = max_json_depth() if max_depth is None else max_depth
    depth = json_depth(text)
    if depth > limit:
        raise MediaError(f"{what} is nested {depth} levels deep, over the limit of {limit} ($XMM_MAX_JSON_DEPTH)",
                         source=source)


def is_regular_file(path: str | os.PathLike[str]) -> bool:
    """True for an existing regular file (symlinks followed); never opens it."""
    try:
        return stat.S_ISREG(os.stat(Path(path)).st_mode)
    except OSError:
        return False
