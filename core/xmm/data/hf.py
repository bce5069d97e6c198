"""Hugging Face ``datasets`` sources, local only: ``save_to_disk`` folders, ``.arrow`` and ``.parquet`` files.

Rows are read raw from Arrow, one at a time, never decoded by ``datasets``: an ``Image``/``Audio``/``Video`` column
arrives as its stored ``{"bytes", "path"}`` and goes to the modality's own loader, the same one that reads files, so
limits, validation and feature-cache fingerprints are the same in every format (and audio needs no torchcodec).
Arrow files are memory-mapped (a million rows cost only the pages read); parquet is read a row group at a time.
``datasets`` and ``pyarrow`` are the optional extra ``data``.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmm.data.errors import SourceError
from xmm.data.stores import RecordStore, Row
from xmm.errors import import_optional

HF_FOLDER_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def _pyarrow() -> Any:
    import_optional("pyarrow.parquet", extra="data", purpose="reading Arrow/parquet datasets")
    return import_optional("pyarrow", extra="data", purpose="reading Arrow/parquet datasets")


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in HF_FOLDER_FILES)


class DiskStore(RecordStore):
    """A folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (``split`` picks one)."""

    def __init__(self, path: str | Path, split: str = "train") -> None:
        self.path = Path(path)
        self.split = split
        _pyarrow()
        datasets = import_optional("datasets", extra="data", purpose="reading datasets save_to_disk folders")
        try:
            ds = datasets.load_from_disk(str(self.path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise SourceError(f"cannot load with datasets.load_from_disk: {e}", source=str(self.path)) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise SourceError(f"has splits {sorted(ds)}, not '{split}'", source=str(self.path), field="split")
            ds = ds[split]
        self.dataset = ds.with_format("arrow")

    def __len__(self) -> int:
        return len(self.dataset)

    def where(self, i: int) -> str:
        return f"{self.path}[row {i}]"

    def row(self, i: int) -> Row:
        return Row(self.dataset[i].to_pylist()[0])


class ArrowStore(RecordStore):
    """One ``.arrow`` file (IPC stream as ``datasets`` writes it, or IPC file), memory-mapped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._table: Any = None
        _ = len(self)  # open now: a broken file is a SourceError here, not on the first step

    @property
    def table(self) -> Any:
        if self._table is None:
            pa = _pyarrow()
            try:
                source = pa.memory_map(str(self.path), "r")
                try:
                    self._table = pa.ipc.open_file(source).read_all()
                except pa.ArrowInvalid:
                    self._table = pa.ipc.open_stream(pa.memory_map(str(self.path), "r")).read_all()
            except (OSError, pa.ArrowInvalid) as e:
                raise SourceError(f"is not an Arrow file: {e}", source=str(self.path)) from None
        return self._table

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def where(self, i: int) -> str:
        return f"{self.path}[row {i}]"

    def row(self, i: int) -> Row:
        return Row(self.table.slice(i, 1).to_pylist()[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_table": None}


class ParquetStore(RecordStore):
    """One ``.parquet`` file; row groups are read on demand (the two most recent are kept)."""

    keep = 2

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        pa = _pyarrow()
        try:
            meta = pa.parquet.ParquetFile(str(self.path)).metadata
        except (OSError, pa.ArrowInvalid) as e:
            raise SourceError(f"is not a parquet file: {e}", source=str(self.path)) from None
        sizes = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
        self.starts = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        self._file: Any = None
        self._groups: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return self.starts[-1]

    def where(self, i: int) -> str:
        return f"{self.path}[row {i}]"

    def _group(self, k: int) -> Any:
        if k not in self._groups:
            if self._file is None:
                self._file = _pyarrow().parquet.ParquetFile(str(self.path))
            self._groups[k] = self._file.read_row_group(k)
            while len(self._groups) > self.keep:
                self._groups.popitem(last=False)
        self._groups.move_to_end(k)
        return self._groups[k]

    def row(self, i: int) -> Row:
        k = bisect.bisect_right(self.starts, i) - 1
        return Row(self._group(k).slice(i - self.starts[k], 1).to_pylist()[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None, "_groups": OrderedDict()}


def table_stores(paths: Sequence[Path]) -> list[RecordStore]:
    """Stores for ``.arrow`` / ``.parquet`` shard files."""
    out: list[RecordStore] = []
    for p in paths:
        out.append(ParquetStore(p) if p.suffix == ".parquet" else ArrowStore(p))
    return out
