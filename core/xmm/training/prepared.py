"""A stage's records prepared once, and batches assembled from them in the data loader's worker processes.

Templating, tokenising and label masking of a record do not change between epochs, nor does the preprocessed input
of an item whose encoder reads small tensors (device telemetry): :class:`PreparedExamples` does that work the first
time a record is reached and keeps it, in the process that reached it (a worker keeps its own). Each epoch,
:class:`PreparedCollator` (the loader's ``collate_fn``) only pads the prepared records into a batch and readies the
media the model will encode: a feature-cache hit gets its cache key (its pixels are never decoded), every other item
is decoded and preprocessed there, in the worker, so the training process only runs the encoder's forward pass.
The batch also carries its answer-token count, read on the host before it reaches the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from xmm.data import BadExample
from xmm.errors import MediaError, PromptError, TrainingError
from xmm.model.media import PREPROCESSED, own_encode
from xmm.model.splice import IGNORE_INDEX
from xmm.training.cache import CACHE_KEY
from xmm.training.data import SkippedBatch

# an item's preprocessed input is kept across epochs up to this size (telemetry windows: a few KB; an image's
# pixels, hundreds of KB, are decoded again instead: a stage of them would hold its whole dataset in memory)
KEEP_INPUT_BYTES = 64 * 1024


@dataclass
class PreparedExample:
    """One record tokenised once: its ids and labels, its media items (unloaded templates), the raw record, and the
    preprocessed input of each item kept across epochs (None: prepared again each time)."""

    ids: list[int]
    labels: list[int]
    items: list[Any]
    example: Mapping[str, Any]
    inputs: list[dict[str, torch.Tensor] | None] = field(default_factory=list)

    @property
    def source(self) -> str | None:
        return self.example.get("source")

    def encoded(self) -> tuple[list[int], list[int], list[Any]]:
        """``(ids, labels, items)`` for one batch: fresh copies of the items (a batch moves their positions)."""
        return self.ids, self.labels, [dataclasses.replace(it) for it in self.items]


class PreparedExamples(torch.utils.data.Dataset):
    """``dataset[i]``: record ``i`` of ``dataset`` as a :class:`PreparedExample` (encoded by ``collator`` the first
    time this process reaches it) or a :class:`~xmm.data.BadExample` (a record the collator refuses)."""

    def __init__(self, dataset: Any, collator: Any) -> None:
        self.dataset = dataset
        self.collator = collator
        self._memo: dict[int, PreparedExample | BadExample] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> PreparedExample | BadExample:
        found = self._memo.get(index)
        if found is None:
            found = self._memo[index] = self._prepare(self.dataset[index])
        return found

    def _prepare(self, example: Any) -> PreparedExample | BadExample:
        if isinstance(example, BadExample):
            return example
        source = example.get("source")
        try:
            ids, labels, items = self.collator.encode_example(example, 0)
        except (MediaError, PromptError) as e:
            kind = "unreadable_media" if isinstance(e, MediaError) else "invalid_example"
            return BadExample(kind, f"{source or '?'}: {e}", source)
        return PreparedExample(ids, labels, items, example, [None] * len(items))

    def length(self, index: int) -> int:
        """Text tokens of record ``index`` (0 for a bad record); prepares it."""
        found = self[index]
        return len(found.ids) if isinstance(found, PreparedExample) else 0

    def positions(self, index: int) -> int:
        """LLM positions record ``index`` takes once its media are spliced in (each item as many as the collator's
        ``media_tokens`` says; 0 for a bad record); prepares it."""
        found = self[index]
        if not isinstance(found, PreparedExample):
            return 0
        return len(found.ids) - len(found.items) + sum(self.collator.media_tokens(it) for it in found.items)


class PreparedCollator:
    """``collate_fn`` over :class:`PreparedExample` / :class:`BadExample` items.

    ``collator``: the model's :class:`~xmm.model.collator.MultimodalCollator` (pads with :meth:`assemble`).
    ``encoders``: the model's encoders by modality, whose ``preprocess`` runs here. ``provider``: the stage's
    :class:`~xmm.training.cache.CachedFeatureProvider` (None: no feature cache), whose hits are neither decoded nor
    preprocessed. Records whose media fail to decode are dropped from their batch into ``batch.skipped``
    (``(kind, message, key)``); a batch with nothing usable is a :class:`SkippedBatch`; with ``on_bad_sample: fail``
    the first bad record raises :class:`TrainingError`. ``batch.answer_tokens``: label positions of the batch.
    """

    def __init__(self, collator: Any, encoders: Mapping[str, Any], *, provider: Any = None,
                 on_bad_sample: str = "skip") -> None:
        self.collator = collator
        self.encoders = encoders
        self.provider = provider
        self.on_bad_sample = on_bad_sample

    def __call__(self, examples: Sequence[PreparedExample | BadExample]) -> Any:
        # records refused when read or tokenised first, then those whose media fail to decode
        skipped = [(ex.kind, ex.message, ex.key) for ex in examples if isinstance(ex, BadExample)]
        self._check_policy(skipped)
        good: list[tuple[PreparedExample, tuple[list[int], list[int], list[Any]]]] = []
        for ex in examples:
            if isinstance(ex, BadExample):
                continue
            encoded = ex.encoded()
            problem = self._ready_media(ex, encoded[2])
            if problem is None:
                good.append((ex, encoded))
            else:
                self._check_policy([problem])
                skipped.append(problem)
        if not good:
            return SkippedBatch(skipped)
        batch = self.collator.assemble([e for _, e in good], [p.example for p, _ in good])
        pack_inputs(batch.media)
        batch.skipped = skipped
        batch.answer_tokens = int((batch.labels != IGNORE_INDEX).sum()) if batch.labels is not None else 0
        return batch

    def _check_policy(self, problems: list[tuple[str, str, str | None]]) -> None:
        if problems and self.on_bad_sample == "fail":
            kind, message, _ = problems[0]
            raise TrainingError(f"bad sample ({kind}): {message} (on_bad_sample: fail)")

    def _ready_media(self, ex: PreparedExample, items: list[Any]) -> tuple[str, str, str | None] | None:
        """Ready each item for the model: its cache key when it is a hit, else its preprocessed input (kept in
        ``ex`` when small); a record whose media cannot be decoded is returned as a problem."""
        for k, item in enumerate(items):
            provider = self.provider
            if provider is not None and provider.cacheable(item.modality):
                try:
                    key = provider.key(item)  # hashes the file: the training process need not
                except MediaError as e:
                    return "unreadable_media", f"{ex.source or '?'}: {e}", ex.source
                setattr(item, CACHE_KEY, key)
                if provider.cache.has(key):
                    continue
            if ex.inputs[k] is not None:
                setattr(item, PREPROCESSED, ex.inputs[k])
                continue
            encoder = self.encoders.get(item.modality)
            try:
                loaded = item.load()
                if encoder is None or own_encode(encoder):
                    continue
                inputs = encoder.preprocess(loaded)
            except MediaError as e:
                return "unreadable_media", f"{ex.source or '?'}: {e}", ex.source
            setattr(item, PREPROCESSED, inputs)
            item._loaded, item._is_loaded = None, False  # the batch carries the tensors, not the decoded input too
            if sum(t.numel() * t.element_size() for t in inputs.values()) <= KEEP_INPUT_BYTES:
                ex.inputs[k] = inputs
        return None


def pack_inputs(items: Sequence[Any]) -> None:
    """Make the items' preprocessed tensors views of one buffer per dtype: a batch then leaves a worker process as a
    few shared-memory buffers, not one per tensor (each is a file descriptor until the batch is freed, and a few
    hundred small tensors per batch exhaust the process's limit)."""
    ready = [(item, getattr(item, PREPROCESSED)) for item in items if getattr(item, PREPROCESSED, None) is not None]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for _, inputs in ready:
        for t in inputs.values():
            by_dtype.setdefault(t.dtype, []).append(t)
    buffers = {dt: torch.cat([t.reshape(-1) for t in ts]) for dt, ts in by_dtype.items()}
    offsets = dict.fromkeys(buffers, 0)
    for item, inputs in ready:
        packed = {}
        for k, t in inputs.items():
            start = offsets[t.dtype]
            packed[k] = buffers[t.dtype][start : start + t.numel()].view(t.shape)
            offsets[t.dtype] = start + t.numel()
        setattr(item, PREPROCESSED, packed)
