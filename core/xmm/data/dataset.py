"""``XmmDataset``: a map-style dataset over any source whose records are read, converted and checked on access.

Opening costs one cached index scan (see :mod:`xmm.data.cache`), not a pass over every record: a million-line
manifest is ready in seconds. ``dataset[i]`` is the collator's input dict, or a :class:`BadExample` (kind, message
naming ``file:line`` and the field, key) when record ``i`` cannot be used; the training collator drops it and the
trainer counts it once. ``xmm data check`` walks every record ahead of time to list them all.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.data.errors import DataError, MediaFileError, RecordTooLargeError
from xmm.data.formats import Context, convert
from xmm.data.limits import text_chars
from xmm.data.paths import MediaRoot
from xmm.data.source import DataSource, open_store
from xmm.errors import MediaError, PromptError
from xmm.modality import ModalitySpec


@dataclass(frozen=True)
class BadExample:
    """A record that cannot be used: ``kind`` (``invalid_json``, ``unsafe_path``...), a message naming where and
    why, and ``key`` (``file:line``) so that it is counted once however often it is met."""

    kind: str
    message: str
    key: str


@dataclass
class NativeExample:
    """A record in xmm's form: chat messages with resolved media, where it came from, its extra keys."""

    messages: list[dict[str, Any]]
    source: str
    base_dir: Path
    style: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_collator_input(self) -> dict[str, Any]:
        return {**self.extra, "messages": self.messages, "base_dir": self.base_dir, "source": self.source}


class XmmDataset:
    """Records of one :class:`DataSource` in source order; ``len()`` counts records, good or bad.

    ``specs``: the model's modalities (name -> :class:`~xmm.modality.ModalitySpec`). ``base_dir``: what relative
    source paths are relative to (the plan's folder). ``require_answer``: a record needs an assistant answer
    (training and evaluation do).
    """

    def __init__(self, source: DataSource | str | Path | Mapping[str, Any], specs: Mapping[str, ModalitySpec], *,
                 base_dir: str | Path | None = None, require_answer: bool = True) -> None:
        self.source = DataSource.coerce(source).resolved(base_dir)
        self.specs = dict(specs)
        self.store, default_root = open_store(self.source)
        root = Path(self.source.media_root) if self.source.media_root else default_root
        self.limits = self.source.data_limits()
        self.ctx = Context(self.specs, MediaRoot(root, self.source.allow_outside_paths), self.limits,
                           self.source.columns, self.source.input_audio_modality)
        self.style = "auto" if self.source.format in ("auto", "hf") else self.source.format
        self.require_answer = require_answer

    @property
    def media_root(self) -> Path:
        return self.ctx.root.root

    def __len__(self) -> int:
        return len(self.store)

    def where(self, index: int) -> str:
        """``file:line`` (JSON Lines), ``file[element]`` (a JSON array), ``file[row N]`` or ``file[key]`` (tar)."""
        return self.store.where(index)

    def example(self, index: int) -> NativeExample:
        """Record ``index`` converted and checked; raises a :class:`~xmm.data.errors.DataError` naming where."""
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        where = self.store.where(index)
        try:
            row = self.store.row(index)
            ctx = self.ctx if row.members is None else dataclasses.replace(self.ctx, members=row.members)
            conv = convert(row.record, self.style, ctx, media_files=row.media_files)
            self._check(conv.messages)
        except DataError as e:
            raise e.at(where) from e
        except MediaError as e:
            raise MediaFileError(str(e), source=where) from e
        except PromptError as e:
            raise DataError(str(e), source=where) from e
        return NativeExample(conv.messages, where, self.media_root, conv.style, conv.extra)

    def _check(self, messages: list[dict[str, Any]]) -> None:
        from xmm.model.messages import parse_conversation

        n = text_chars(messages)
        if n > self.limits.max_text_chars:
            raise RecordTooLargeError(f"{n:,} characters of text, over max_text_chars={self.limits.max_text_chars:,}")
        parsed = parse_conversation(messages, self.specs)
        if self.require_answer and not any(m["role"] == "assistant" and m["content"].strip() for m in parsed.messages):
            raise DataError("no assistant answer to train on")
        for item in parsed.media:
            item.check()

    def __getitem__(self, index: int) -> dict[str, Any] | BadExample:
        try:
            return self.example(index).as_collator_input()
        except DataError as e:
            return BadExample(e.kind, str(e), e.source or self.store.where(index))

    def __iter__(self) -> Iterator[dict[str, Any] | BadExample]:
        for i in range(len(self)):
            yield self[i]


class DatasetChain:
    """Several datasets one after the other (a stage's ``data.train`` list); same interface as one."""

    def __init__(self, datasets: list[XmmDataset]) -> None:
        self.datasets = list(datasets)
        self.ends: list[int] = []
        total = 0
        for ds in self.datasets:
            total += len(ds)
            self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def _locate(self, index: int) -> tuple[XmmDataset, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} of {len(self)}")
        k = bisect.bisect_right(self.ends, index)
        return self.datasets[k], index - (self.ends[k - 1] if k else 0)

    def where(self, index: int) -> str:
        ds, i = self._locate(index)
        return ds.where(i)

    def example(self, index: int) -> NativeExample:
        ds, i = self._locate(index)
        return ds.example(i)

    def __getitem__(self, index: int) -> dict[str, Any] | BadExample:
        ds, i = self._locate(index)
        return ds[i]

    def __iter__(self) -> Iterator[dict[str, Any] | BadExample]:
        for ds in self.datasets:
            yield from ds
