"""Training data: a stage's datasets, bad-sample accounting, a deterministic batch order and a safe collator.

A stage reads its datasets (xmm JSONL manifests, LLaVA, ShareGPT / LLaMA-Factory, OpenAI chats, Hugging Face
``datasets``) through :mod:`xmm.data` (:func:`stage_dataset`): indexed, never read whole before the first step, each
record converted and checked when a batch reaches it. A record that is not valid JSON, does not have a chat shape,
names an unknown modality, has no assistant answer, points outside its media root or at a missing file arrives as
a :class:`~xmm.data.BadExample`; media that fail to decode are found when their batch is collated. Either way
:class:`SafeCollator` drops the sample and it is counted (and logged) once, or the run stops with
:class:`~xmm.errors.TrainingError` when ``on_bad_sample: fail``. :func:`read_manifest` reads a whole source at once
(evaluation sets).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from xmm.data import BadExample, DataError, DataSource, open_dataset, open_datasets
from xmm.errors import MediaError, PromptError, TrainingError

log = logging.getLogger(__name__)


@dataclass
class BadSamples:
    """Counts of skipped samples by kind, and the first few messages (for the log and the final summary)."""

    on_bad_sample: str = "skip"
    counts: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    keep: int = 20
    _seen: dict[str, str] = field(default_factory=dict, repr=False)  # key -> kind

    def record(self, kind: str, message: str, *, key: str | None = None) -> None:
        """Count one bad sample (once per ``key``, e.g. ``file:line``, however many epochs meet it); raise
        :class:`TrainingError` instead when the policy is ``fail``."""
        if self.on_bad_sample == "fail":
            raise TrainingError(f"bad sample ({kind}): {message} (on_bad_sample: fail)")
        if key is not None:
            if key in self._seen:
                return
            self._seen[key] = kind
        self.counts[kind] += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)
        log.warning("skipped bad sample (%s): %s", kind, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.counts), "examples": list(self.examples)}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: counts, messages and the keys already counted."""
        return {**self.as_dict(), "seen": dict(self._seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = Counter(state.get("by_kind", {}))
        self.examples = list(state.get("examples", []))
        self._seen = dict(state.get("seen", {}))

    @classmethod
    def merged(cls, states: list[dict[str, Any]], keep: int = 20) -> dict[str, Any]:
        """Counts over several processes' :meth:`state_dict`: a keyed sample seen by several counts once."""
        seen: dict[str, str] = {}
        keyless: Counter[str] = Counter()
        examples: list[str] = []
        for st in states:
            seen.update(st.get("seen", {}))
            keyless.update(Counter(st.get("by_kind", {})) - Counter(st.get("seen", {}).values()))
            examples.extend(e for e in st.get("examples", []) if e not in examples)
        counts = Counter(seen.values()) + keyless
        return {"total": sum(counts.values()), "by_kind": dict(counts), "examples": examples[:keep], "seen": seen}


@dataclass
class Example:
    """One record in xmm's form: chat messages (media resolved), its media root, ``file:line``, its extra keys."""

    messages: list[dict[str, Any]]
    base_dir: Path
    source: str
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys of the line, e.g. "meta"

    def as_collator_input(self) -> dict[str, Any]:
        return {**self.extra, "messages": self.messages, "base_dir": self.base_dir, "source": self.source}


def read_manifest(path: str | Path | DataSource | Mapping[str, Any], specs: Mapping[str, Any],
                  bad: BadSamples) -> list[Example]:
    """Read a whole source (a manifest path or a :class:`~xmm.data.DataSource`) now; bad records are recorded in
    ``bad`` and left out. Training does not call this: it reads lazily (:func:`stage_dataset`)."""
    ds = open_dataset(path, specs)
    out: list[Example] = []
    for i in range(len(ds)):
        try:
            ex = ds.example(i)
        except DataError as e:
            bad.record(e.kind, str(e), key=e.source)
            continue
        extra = dict(ex.extra)
        if ds.source.allow_outside_paths:
            extra["allow_outside_paths"] = True
        out.append(Example(ex.messages, ex.base_dir, ex.source, extra))
    return out


def stage_sources(entries: Sequence[Any], base_dir: str | Path, *, source: str | None = None) -> list[DataSource]:
    """A stage's ``data.train`` entries (paths or :class:`~xmm.data.DataSource` fields) resolved against the plan's
    folder."""
    return [DataSource.coerce(e, source=source).resolved(base_dir) for e in entries]


class _AllowOutside:
    """A dataset whose examples carry ``allow_outside_paths`` for the collator's own path check."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return item if isinstance(item, BadExample) else {**item, "allow_outside_paths": True}


def stage_dataset(entries: Sequence[Any], specs: Mapping[str, Any], base_dir: str | Path, *,
                  max_examples: int | None = None, source: str | None = None) -> Any:
    """The lazy dataset of a stage's sources, in order (the first ``max_examples`` records when given).

    ``dataset[i]`` is a collator input or a :class:`~xmm.data.BadExample`; opening indexes each file once (cached),
    so a million-record source is ready in about a second.
    """
    from torch.utils.data import Subset

    sources = stage_sources(entries, base_dir, source=source)
    chain = open_datasets(sources, specs)
    datasets: list[Any] = [_AllowOutside(d) if d.source.allow_outside_paths else d for d in chain.datasets]
    dataset: Any = datasets[0] if len(datasets) == 1 else torch.utils.data.ConcatDataset(datasets)
    if max_examples is not None and max_examples < len(dataset):
        dataset = Subset(dataset, range(max_examples))
    return dataset


class ManifestDataset(Dataset):
    """Examples of one or more manifests, in file order; ``dataset[i]`` is a collator input dict."""

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = list(examples)

    @classmethod
    def from_manifests(
        cls, paths: Sequence[str | Path], specs: Mapping[str, Any], bad: BadSamples, *, max_examples: int | None = None
    ) -> ManifestDataset:
        examples: list[Example] = []
        for p in paths:
            examples.extend(read_manifest(p, specs, bad))
        if max_examples is not None:
            examples = examples[:max_examples]
        return cls(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index].as_collator_input()


class EpochBatchSampler:
    """Batches of dataset indices whose order is a pure function of ``(seed, epoch)``.

    That makes a resumed run see exactly the batches the killed one would have: set the epoch and the first batch
    with :meth:`set_position`. ``batch_size`` is the global batch; accelerate splits each batch across processes.
    (Deliberately no ``set_epoch``: accelerate's loader would call it with its own iteration count.)
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_examples))
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(self.num_examples, generator=g).tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        for b in range(self.start_batch, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size]


class BucketBatchSampler(EpochBatchSampler):
    """:class:`EpochBatchSampler` whose batches hold examples of similar length, so padded lengths come from a small
    set and little of a batch is padding.

    Each epoch's shuffled order is cut into windows of ``window`` batches; a window's examples are sorted by
    ``length(index)`` (stable) and cut into batches, and the batches of the epoch are then shuffled. Everything is a
    function of ``(seed, epoch)`` (and the lengths), so a resumed run sees the same batches; the lengths of a window
    are asked for only when the window is reached.
    """

    def __init__(self, num_examples: int, batch_size: int, *, seed: int, length: Callable[[int], int],
                 window: int = 32, shuffle: bool = True, drop_last: bool = True) -> None:
        super().__init__(num_examples, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last)
        if window < 1:
            raise ValueError("window must be >= 1")
        self.length = length
        self.window = window

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        n_batches = len(self)
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63) + 1)
        batch_order = torch.randperm(n_batches, generator=g).tolist() if self.shuffle else list(range(n_batches))
        span = self.window * self.batch_size
        sorted_windows: dict[int, list[int]] = {}
        for b in batch_order[self.start_batch :]:
            w, first = divmod(b * self.batch_size, span)
            if w not in sorted_windows:
                members = order[w * span : (w + 1) * span]
                sorted_windows[w] = sorted(members, key=self.length)
            yield sorted_windows[w][first : first + self.batch_size]


@dataclass
class SkippedBatch:
    """What :class:`SafeCollator` returns when no example of a batch is usable (the skips travel with it)."""

    skipped: list[tuple[str, str, str | None]]


class SafeCollator:
    """Wraps the model's collator: examples whose media cannot be decoded are dropped from their batch.

    ``needs_decode(item) -> bool`` says whether an item must be decoded now (False for a feature-cache hit, whose
    pixels are never needed); every other item is decoded here, before any model work. The dropped examples travel
    with the batch as ``batch.skipped`` (``(kind, message, key)`` tuples, recorded by the training process, which also
    works from DataLoader worker processes); a batch with nothing usable is a :class:`SkippedBatch`. With
    ``on_bad_sample: fail`` the first bad example raises :class:`TrainingError` instead.
    """

    def __init__(self, collator: Callable[[Sequence[Any]], Any], on_bad_sample: str = "skip",
                 needs_decode: Callable[[Any], bool] | None = None) -> None:
        self.collator = collator
        self.on_bad_sample = on_bad_sample
        self.needs_decode = needs_decode or (lambda item: True)

    def _collate(self, examples: Sequence[Mapping[str, Any]]) -> Any:
        batch = self.collator(examples)
        for item in batch.media:
            if self.needs_decode(item):
                item.load()
        return batch

    def _problem(self, example: Mapping[str, Any]) -> tuple[str, str, str | None] | None:
        source = example.get("source")
        try:
            self._collate([example])
        except (MediaError, PromptError) as e:
            kind = "unreadable_media" if isinstance(e, MediaError) else "invalid_example"
            if self.on_bad_sample == "fail":
                raise TrainingError(f"bad sample ({kind}): {source or '?'}: {e} (on_bad_sample: fail)") from e
            return kind, f"{source or '?'}: {e}", source
        return None

    def __call__(self, examples: Sequence[Mapping[str, Any] | BadExample]) -> Any:
        marked = [(ex.kind, ex.message, ex.key) for ex in examples if isinstance(ex, BadExample)]
        if marked:
            if self.on_bad_sample == "fail":
                kind, message, _ = marked[0]
                raise TrainingError(f"bad sample ({kind}): {message} (on_bad_sample: fail)")
            examples = [ex for ex in examples if not isinstance(ex, BadExample)]
            if not examples:
                return SkippedBatch(marked)
        try:
            batch = self._collate(examples)
            batch.skipped = marked
            return batch
        except (MediaError, PromptError):
            pass  # find the culprit(s) one by one; only on this rare path
        problems = [self._problem(ex) for ex in examples]
        skipped = marked + [p for p in problems if p is not None]
        good = [ex for ex, p in zip(examples, problems) if p is None]
        if not good:
            return SkippedBatch(skipped)
        batch = self._collate(good)
        batch.skipped = skipped
        return batch


def record_skipped(batch: Any, bad: BadSamples) -> Any:
    """Record the examples a :class:`SafeCollator` dropped; returns the batch, or None when nothing was usable."""
    for kind, message, key in getattr(batch, "skipped", None) or []:
        bad.record(kind, message, key=key)
    return None if isinstance(batch, SkippedBatch) else batch
