"""``DataSource``: where a dataset is, which format its records have, where its media are; and opening its store.

The container is recognised from the path (a ``save_to_disk`` folder; ``.parquet``/``.arrow``/``.tar`` files, a
folder or glob of them; ``.jsonl``; ``.json`` holding one array or JSON Lines); ``format`` says how records are
written (``auto`` detects it per record, see :mod:`xmm.data.formats`). ``hf`` is ``auto`` restricted to the
``datasets`` containers.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from xmm.data.errors import SourceError
from xmm.data.hf import DiskStore, is_hf_folder, table_stores
from xmm.data.limits import DataLimits
from xmm.data.scan import BOM
from xmm.data.stores import ConcatStore, JsonArrayStore, JsonLinesStore, RecordStore, TarStore
from xmm.errors import ConfigError

FORMATS = ("auto", "xmm", "llava", "sharegpt", "openai", "hf")
Format = Literal["auto", "xmm", "llava", "sharegpt", "openai", "hf"]
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
_TABLE_SUFFIXES = (".parquet", ".arrow")


class DataSource(BaseModel):
    """One dataset to read. Relative ``path``/``media_root`` are relative to the plan file (or the working folder).

    ``media_root``: the folder media paths resolve in (default: the dataset's own folder); paths that leave it
    are refused unless ``allow_outside_paths``. ``columns``: canonical key -> your column (``{"images":
    "image_paths", "conversations": "dialog"}``). ``split``: the split of a ``DatasetDict`` folder.
    ``input_audio_modality``: the modality OpenAI ``input_audio`` parts feed (``audio`` or e.g. ``speech``).
    ``limits``: :class:`~xmm.data.limits.DataLimits` (None: the defaults, read when the source opens).
    """

    model_config = ConfigDict(extra="forbid")

    path: str
    format: Format = "auto"
    media_root: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    split: str = "train"
    allow_outside_paths: bool = False
    input_audio_modality: str = "audio"
    limits: DataLimits | None = Field(None, description="per-record limits; None: xmm's defaults ($XMM_MAX_*)")

    @classmethod
    def coerce(cls, value: Any, *, source: str | None = None, **overrides: Any) -> DataSource:
        """A ``DataSource`` from a path, a mapping or a ``DataSource``; ``overrides`` replace fields (not None)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if isinstance(value, DataSource):
            return value.model_copy(update=overrides) if overrides else value
        if isinstance(value, (str, os.PathLike)):
            value = {"path": os.fspath(value)}
        if not isinstance(value, Mapping):
            raise ConfigError(f"a data source is a path or a mapping, got {type(value).__name__}", source=source)
        try:
            return cls.model_validate({**value, **overrides})
        except ValidationError as e:
            err = e.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise ConfigError(err["msg"], field=field, source=source) from None

    def data_limits(self) -> DataLimits:
        """``limits`` or the defaults."""
        return self.limits if self.limits is not None else DataLimits()

    def resolved(self, base_dir: str | Path | None) -> DataSource:
        """The same source with ``path`` and ``media_root`` made absolute against ``base_dir``."""
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        def absolute(p: str) -> str:
            return str(base / os.path.expanduser(p)) if not os.path.isabs(os.path.expanduser(p)) else p

        return self.model_copy(update={"path": absolute(self.path),
                                       "media_root": absolute(self.media_root) if self.media_root else None})


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(4096)
    head = head[len(BOM):] if head.startswith(BOM) else head
    stripped = head.lstrip(b" \t\r\n")
    return stripped[:1]


def _json_store(path: Path, limits: DataLimits) -> RecordStore:
    first = _first_byte(path)
    if first == b"[":
        return JsonArrayStore(path, limits)
    if first in (b"{", b""):
        return JsonLinesStore(path, limits)
    raise SourceError("is neither JSON Lines nor a JSON array (first character "
                      f"{first.decode('latin-1')!r})", source=str(path))


def _shards(paths: list[Path], src: DataSource) -> RecordStore:
    limits = src.data_limits()
    suffixes = {p.suffix for p in paths}
    if len(suffixes) > 1:
        raise SourceError(f"mixes file kinds {sorted(suffixes)}; give one kind per source", source=src.path)
    suffix = suffixes.pop()
    if src.format == "hf" and suffix in _JSON_SUFFIXES:
        raise SourceError("format 'hf' reads save_to_disk folders and .parquet/.arrow/.tar files; for JSON use "
                          "auto, xmm, llava, sharegpt or openai", source=src.path, field="format")
    if suffix in _TABLE_SUFFIXES:
        stores = table_stores(paths)
    elif suffix == ".tar":
        stores = [TarStore(p, limits) for p in paths]
    elif suffix in (".jsonl", ".ndjson"):
        stores = [JsonLinesStore(p, limits) for p in paths]
    else:  # .json and anything else: JSON Lines or one array, by the first character
        stores = [_json_store(p, limits) for p in paths]
    return stores[0] if len(stores) == 1 else ConcatStore(stores)


def open_store(src: DataSource) -> tuple[RecordStore, Path]:
    """The store of a (resolved) source and its default media root."""
    path = Path(src.path)
    if glob.has_magic(src.path):
        files = sorted(Path(p) for p in glob.glob(src.path) if os.path.isfile(p))
        if not files:
            raise SourceError("matches no file", source=src.path)
        return _shards(files, src), Path(os.path.commonpath([str(f.parent) for f in files]))
    if path.is_dir():
        if is_hf_folder(path):
            return DiskStore(path, src.split), path
        kinds = (*_TABLE_SUFFIXES, ".tar", ".jsonl")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in kinds)
        if not files:
            raise SourceError("is a folder without a datasets save_to_disk layout or .parquet/.arrow/.tar/.jsonl "
                              "files", source=str(path))
        return _shards(files, src), path
    if not path.exists():
        raise SourceError("not found", source=str(path))
    if not path.is_file():
        raise SourceError("is not a regular file or folder", source=str(path))
    return _shards([path], src), path.parent
