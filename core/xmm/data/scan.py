"""Fast byte scans with numpy: line boundaries of a JSON Lines file, element boundaries of a JSON array.

Nothing here parses JSON: the scans find structure (newlines; brackets, braces and commas outside strings) so that a
record can be read on its own later. Each scan reads the file in fixed-size chunks, so memory stays flat whatever
the file size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xmm.data.errors import SourceError

CHUNK = 8 << 20

_QUOTE, _BSLASH, _OPEN, _CLOSE, _COMMA = 1, 2, 3, 4, 5
_LUT = np.zeros(256, dtype=np.uint8)
_LUT[ord('"')] = _QUOTE
_LUT[ord("\\")] = _BSLASH
_LUT[[ord("["), ord("{")]] = _OPEN
_LUT[[ord("]"), ord("}")]] = _CLOSE
_LUT[ord(",")] = _COMMA
_WS = b" \t\r\n"
BOM = b"\xef\xbb\xbf"


@dataclass
class ScanState:
    """What a structural scan carries from one chunk to the next."""

    in_string: bool = False
    depth: int = 0


def structure(a: np.ndarray, state: ScanState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brackets, braces and commas of a JSON text chunk that lie outside strings.

    Returns ``(positions, kinds, depth_after)`` (kinds: open, close, comma; the depth after each character) and
    updates ``state``. ``a`` (uint8) must not end inside a run of backslashes: callers cut chunks before one.
    """
    cls = _LUT[a]
    idx = np.flatnonzero(cls)
    kinds = cls[idx]
    # everything below runs over the interesting characters only, in file order
    is_quote = (kinds == _QUOTE).view(np.uint8)
    bs = np.flatnonzero(kinds == _BSLASH)  # indices into idx
    if bs.size:
        # in a run of backslashes every other one escapes the next character; only escaped quotes matter here
        pos_bs = idx[bs]
        run_start = np.ones(bs.size, dtype=bool)
        np.not_equal(np.diff(pos_bs), 1, out=run_start[1:])
        first = np.flatnonzero(run_start)[np.cumsum(run_start) - 1]
        escaping = bs[((np.arange(bs.size) - first) & 1) == 0]
        nxt = escaping + 1
        ok = nxt < idx.size
        escaping, nxt = escaping[ok], nxt[ok]
        hit = nxt[idx[nxt] == idx[escaping] + 1]
        is_quote[hit] = 0
    # parity of the quotes before each character (a quote itself is never structural): odd = inside a string
    inside = np.bitwise_xor.accumulate(is_quote) ^ is_quote ^ np.uint8(state.in_string)
    sel = (kinds >= _OPEN) & (inside == 0)
    pos, kinds = idx[sel], kinds[sel]
    delta = (kinds == _OPEN).astype(np.int64) - (kinds == _CLOSE)
    depth = np.cumsum(delta) + state.depth
    n_quotes = int(np.count_nonzero(is_quote))
    state.in_string = bool((n_quotes + state.in_string) & 1)
    if depth.size:
        state.depth = int(depth[-1])
    return pos, kinds, depth


def _read_chunks(path: Path, size: int | None = None, *, cut_backslashes: bool = False):
    """Yield ``(offset, array)`` chunks of a file; optionally never ending a chunk inside a run of backslashes."""
    size = size or CHUNK
    buf = bytearray(size)
    view = memoryview(buf)
    offset = 0
    with open(path, "rb") as f:
        while True:
            f.seek(offset)
            n = f.readinto(buf)
            if not n:
                return
            end = n
            if cut_backslashes and n == size:
                while end > 0 and buf[end - 1] == 0x5C:
                    end -= 1
                if end == 0:
                    raise SourceError(f"a run of {size} backslashes cannot be indexed", source=str(path))
            yield offset, np.frombuffer(view[:end], dtype=np.uint8)
            offset += end


def line_index(path: str | Path) -> np.ndarray:
    """``[N, 3]`` int64 rows ``(start, end, line_number)`` of the non-blank lines of a file (``end`` excludes the
    newline and a carriage return before it; line numbers start at 1)."""
    path = Path(path)
    newlines: list[np.ndarray] = []
    crs: list[np.ndarray] = []
    prev_last = 0
    size = 0
    for offset, a in _read_chunks(path):
        nl = np.flatnonzero(a == 10)
        if nl.size:
            before = np.empty(nl.size, dtype=np.uint8)
            inner = nl > 0
            before[inner] = a[nl[inner] - 1]
            before[~inner] = prev_last
            newlines.append(nl + offset)
            crs.append(before == 13)
        prev_last = int(a[-1])
        size = offset + a.size
    nl_all = np.concatenate(newlines) if newlines else np.zeros(0, dtype=np.int64)
    cr_all = np.concatenate(crs) if crs else np.zeros(0, dtype=bool)
    starts = np.concatenate(([0], nl_all + 1))
    ends = np.concatenate((nl_all - cr_all, [size]))
    numbers = np.arange(1, starts.size + 1, dtype=np.int64)
    if size and prev_last == 13:  # a last line without newline that ends in "\r"
        ends[-1] -= 1
    keep = ends > starts
    return np.stack((starts[keep], ends[keep], numbers[keep]), axis=1).astype(np.int64)


def array_index(path: str | Path) -> np.ndarray:
    """``[N, 2]`` int64 rows ``(start, end)``: the byte span of each element of a file holding one JSON array.

    Raises :class:`SourceError` when the file is not a single array (unbalanced, a second value after it, an
    unterminated string): element boundaries cannot be trusted then.
    """
    path = Path(path)
    state = ScanState()
    seps: list[np.ndarray] = []
    opened = closed = False
    first_byte: int | None = None
    for offset, a in _read_chunks(path, cut_backslashes=True):
        if first_byte is None:
            nonws = np.flatnonzero(~np.isin(a, np.frombuffer(_WS, dtype=np.uint8)))
            if offset == 0 and a[:3].tobytes() == BOM:
                nonws = nonws[nonws >= 3]
            if nonws.size:
                first_byte = int(offset + nonws[0])
                if a[nonws[0]] != ord("["):
                    raise SourceError("is not a JSON array (the first character is not '[')", source=str(path))
        pos, kinds, depth = structure(a, state)
        if not pos.size:
            continue
        if closed or depth.min() < 0:
            raise SourceError("is not a single JSON array (text after the closing ']')", source=str(path))
        top = ((kinds == _COMMA) & (depth == 1)) | ((kinds == _OPEN) & (depth == 1)) | ((kinds == _CLOSE) & (depth == 0))
        if not opened:
            if depth[0] != 1 or kinds[0] != _OPEN or int(offset + pos[0]) != first_byte:
                raise SourceError("is not a JSON array", source=str(path))
            opened = True
        if (depth == 0).any():
            zero = int(np.flatnonzero(depth == 0)[0])
            if zero != pos.size - 1 or kinds[zero] != _CLOSE:
                raise SourceError("is not a single JSON array (text after the closing ']')", source=str(path))
            closed = True
        seps.append(pos[top] + offset)
    if first_byte is None:
        raise SourceError("is empty", source=str(path))
    if state.in_string or not closed:
        raise SourceError("is not a complete JSON array (unbalanced brackets or an unterminated string)",
                          source=str(path))
    s = np.concatenate(seps)
    out = np.stack((s[:-1] + 1, s[1:]), axis=1).astype(np.int64)
    if out.shape[0] == 1:
        with open(path, "rb") as f:
            f.seek(int(out[0, 0]))
            if not f.read(int(out[0, 1] - out[0, 0])).strip(_WS):
                return out[:0]  # "[]"
    return out
