"""``xmm.data``: read the datasets people already have as xmm training examples.

Formats: xmm's own JSONL manifests, LLaVA JSON, ShareGPT / LLaMA-Factory (conversations or messages with
``images``/``videos``/``audios`` columns, alpaca), OpenAI chat messages (``image_url``, ``input_audio``) and Hugging
Face ``datasets`` (``save_to_disk`` folders, parquet, arrow, webdataset tars; extra ``data``). Every source is
indexed, not read whole; records are converted and checked when reached; media paths stay inside the dataset's
folder or media root.

>>> ds = open_dataset({"path": "llava_v1_5.json", "media_root": "images"}, model.specs)
>>> ds[0]        # {"messages": [...], "base_dir": ..., "source": "llava_v1_5.json[0]"} or a BadExample
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmm.data.dataset import BadExample, DatasetChain, NativeExample, XmmDataset
from xmm.data.errors import (
    DataError,
    InvalidJSONError,
    MediaFileError,
    NestingTooDeepError,
    RecordTooLargeError,
    SourceError,
    UnsafePathError,
)
from xmm.data.formats import STYLES, detect_style, media_columns
from xmm.data.limits import DataLimits
from xmm.data.paths import MediaRoot
from xmm.data.source import FORMATS, DataSource
from xmm.modality import ModalitySpec


def open_dataset(source: DataSource | str | Path | Mapping[str, Any], specs: Mapping[str, ModalitySpec], *,
                 base_dir: str | Path | None = None, require_answer: bool = True, **fields: Any) -> XmmDataset:
    """Open one source (a path, a mapping of :class:`DataSource` fields or a ``DataSource``); ``fields`` override
    its fields (``format=``, ``media_root=``...)."""
    return XmmDataset(DataSource.coerce(source, **fields), specs, base_dir=base_dir, require_answer=require_answer)


def open_datasets(sources: Sequence[DataSource | str | Path | Mapping[str, Any]], specs: Mapping[str, ModalitySpec],
                  *, base_dir: str | Path | None = None, require_answer: bool = True) -> DatasetChain:
    """Several sources one after the other."""
    return DatasetChain([open_dataset(s, specs, base_dir=base_dir, require_answer=require_answer) for s in sources])


__all__ = [
    "FORMATS",
    "STYLES",
    "BadExample",
    "DataError",
    "DataLimits",
    "DataSource",
    "DatasetChain",
    "InvalidJSONError",
    "MediaFileError",
    "MediaRoot",
    "NativeExample",
    "NestingTooDeepError",
    "RecordTooLargeError",
    "SourceError",
    "UnsafePathError",
    "XmmDataset",
    "detect_style",
    "media_columns",
    "open_dataset",
    "open_datasets",
]
