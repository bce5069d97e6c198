"""Random access to the records of a file without reading it whole: JSON Lines, one JSON array, webdataset tars.

A store knows how many records a source has (from a cached index) and reads record ``i`` on demand, checking its
size before reading and its nesting depth before parsing. Stores hold no open handles when pickled, so DataLoader
workers reopen them.
"""

from __future__ import annotations

import bisect
import os
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xmm.data.cache import cached_index
from xmm.data.errors import DataError, RecordTooLargeError, SourceError
from xmm.data.limits import DataLimits, check_record_size, loads
from xmm.data.scan import array_index, line_index


@dataclass
class Row:
    """One raw record: the parsed JSON object (or a table row); for a webdataset sample also its other files by
    name, base name and extension (``members``) and as ``(extension, reader)`` in tar order (``media_files``)."""

    record: Any
    members: dict[str, Member] | None = None
    media_files: list[tuple[str, Member]] | None = None


class RecordStore(ABC):
    """Base of the stores: ``len(store)``, ``store.where(i)`` (``file:line``...) and ``store.row(i)``."""

    path: Path

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def where(self, i: int) -> str: ...

    @abstractmethod
    def row(self, i: int) -> Row: ...


class _FileStore(RecordStore):
    """A file read with ``pread`` at offsets from an index; the index and the descriptor open lazily."""

    kind = ""

    def __init__(self, path: str | Path, limits: DataLimits) -> None:
        self.path = Path(path)
        self.limits = limits
        self._index: np.ndarray | None = None
        self._fd: int | None = None
        self._pid = -1

    @abstractmethod
    def _build(self, path: Path) -> np.ndarray: ...

    @property
    def index(self) -> np.ndarray:
        if self._index is None:
            try:
                self._index = cached_index(self.path, self.kind, self._build)
            except OSError as e:
                raise SourceError(f"cannot read: {e.strerror or e}", source=str(self.path)) from e
        return self._index

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def _read(self, start: int, end: int) -> bytes:
        check_record_size(end - start, self.limits)
        return self._pread(start, end - start)

    def _pread(self, start: int, size: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, size, start)

    def row(self, i: int) -> Row:
        start, end = int(self.index[i, 0]), int(self.index[i, 1])
        return Row(loads(self._read(start, end), self.limits))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": None, "_fd": None, "_pid": -1}

    # bound at definition: at interpreter exit the os module may already be torn down when a store is collected
    def __del__(self, _getpid=os.getpid, _close=os.close) -> None:
        if getattr(self, "_fd", None) is not None and self._pid == _getpid():
            _close(self._fd)


class JsonLinesStore(_FileStore):
    """One record per line (blank lines do not count); ``where`` is ``file:line``."""

    kind = "lines"

    def _build(self, path: Path) -> np.ndarray:
        return line_index(path)

    def where(self, i: int) -> str:
        return f"{self.path}:{int(self.index[i, 2])}"


class JsonArrayStore(_FileStore):
    """The elements of one JSON array (LLaVA's ``llava_v1_5_mix665k.json``); ``where`` is ``file[element]``."""

    kind = "array"

    def _build(self, path: Path) -> np.ndarray:
        return array_index(path)

    def where(self, i: int) -> str:
        return f"{self.path}[{i}]"


def _split_name(name: str) -> tuple[str, str]:
    """webdataset's grouping: the key is the name up to the first dot of its last component, the rest the ext."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext if dot else "")


def tar_index(path: Path) -> np.ndarray:
    """Structured rows ``(sample, offset, size, name)`` of the regular files of an uncompressed tar, in order;
    consecutive files with the same key form one sample."""
    names: list[bytes] = []
    offsets: list[int] = []
    sizes: list[int] = []
    samples: list[int] = []
    last_key: str | None = None
    sample = -1
    try:
        tf = tarfile.open(path, "r:")
    except tarfile.ReadError as e:
        raise SourceError(f"is not an uncompressed tar ({e}); compressed shards cannot be read at random: "
                          "decompress them", source=str(path)) from None
    with tf:
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as e:
                raise SourceError(f"damaged tar: {e}", source=str(path)) from None
            if info is None:
                break
            tf.members.clear()  # keep memory flat over millions of members
            if not info.isfile():
                continue
            key, _ = _split_name(info.name)
            if key != last_key:
                sample += 1
                last_key = key
            names.append(info.name.encode("utf-8", "surrogateescape"))
            offsets.append(info.offset_data)
            sizes.append(info.size)
            samples.append(sample)
    width = max((len(n) for n in names), default=1)
    out = np.zeros(len(names), dtype=[("sample", "<i8"), ("offset", "<i8"), ("size", "<i8"), ("name", f"S{width}")])
    out["sample"], out["offset"], out["size"], out["name"] = samples, offsets, sizes, names
    return out


@dataclass(frozen=True)
class Member:
    """A file of a webdataset sample, read on call (``size`` is known before reading, for the limits)."""

    store: TarStore
    name: str
    offset: int
    size: int

    def __call__(self) -> bytes:
        limit = self.store.limits.inline_limit(None)
        if self.size > limit:
            raise RecordTooLargeError(f"tar member {self.name!r} of {self.size:,} bytes is over the limit of {limit:,}")
        return self.store._pread(self.offset, self.size)


class TarStore(_FileStore):
    """webdataset shards: a sample is the files sharing a key (``000017.json``, ``000017.jpg``). The ``json`` file is
    the record; the others are served by name and extension (media columns and ``ModalitySpec.file_extensions``)."""

    kind = "tar"

    def __init__(self, path: str | Path, limits: DataLimits) -> None:
        super().__init__(path, limits)
        self._starts: np.ndarray | None = None

    def _build(self, path: Path) -> np.ndarray:
        return tar_index(path)

    @property
    def starts(self) -> np.ndarray:
        if self._starts is None:
            sample = self.index["sample"]
            self._starts = np.searchsorted(sample, np.arange(int(sample[-1]) + 2 if sample.size else 1))
        return self._starts

    def __len__(self) -> int:
        return int(self.starts.size - 1)

    def _key(self, i: int) -> str:
        name = bytes(self.index["name"][int(self.starts[i])]).decode("utf-8", "surrogateescape")
        return _split_name(name)[0]

    def where(self, i: int) -> str:
        return f"{self.path}[{self._key(i)}]"

    def row(self, i: int) -> Row:
        rows = self.index[int(self.starts[i]) : int(self.starts[i + 1])]
        members: dict[str, Member] = {}
        files: list[tuple[str, Member]] = []
        record: Any = None
        for r in rows:
            name = bytes(r["name"]).decode("utf-8", "surrogateescape")
            _, ext = _split_name(name)
            offset, size = int(r["offset"]), int(r["size"])
            if ext == "json":
                record = loads(self._read(offset, offset + size), self.limits)
                continue
            loader = self._member_loader(name, offset, size)
            files.append((ext, loader))
            for alias in (name, name.rpartition("/")[2], ext):
                members.setdefault(alias, loader)
        if record is None:
            raise DataError("the sample has no .json file holding the conversation")
        return Row(record, members, files)

    def _member_loader(self, name: str, offset: int, size: int) -> Member:
        return Member(self, name, offset, size)

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_starts": None}


class ConcatStore(RecordStore):
    """Several stores (shards) as one, in order."""

    def __init__(self, stores: Sequence[RecordStore]) -> None:
        self.stores = list(stores)
        self.path = self.stores[0].path.parent if self.stores else Path(".")
        self._ends: list[int] | None = None

    @property
    def ends(self) -> list[int]:
        if self._ends is None:
            self._ends = np.cumsum([len(s) for s in self.stores]).tolist()
        return self._ends

    def _locate(self, i: int) -> tuple[RecordStore, int]:
        k = bisect.bisect_right(self.ends, i)
        return self.stores[k], i - (self.ends[k - 1] if k else 0)

    def __len__(self) -> int:
        return self.ends[-1] if self.stores else 0

    def where(self, i: int) -> str:
        store, j = self._locate(i)
        return store.where(j)

    def row(self, i: int) -> Row:
        store, j = self._locate(i)
        return store.row(j)
