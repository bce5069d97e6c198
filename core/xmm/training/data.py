"""Training data: JSONL chat manifests, bad-sample accounting, a deterministic batch order and a safe collator.

A manifest line is one example in the Hugging Face chat format; media ``path``s are relative to the manifest file.
Lines that are not valid JSON, do not have the chat shape, name an unknown modality, have no assistant answer or
point at a missing file are dropped when the manifest is read; media that fail to decode are dropped when their
batch is collated. Either way the sample is counted (and logged), or the run stops with
:class:`~xmm.errors.TrainingError` when ``on_bad_sample: fail``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

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
    """One manifest line: the chat messages, the folder media paths resolve against, and ``file:line``."""

    messages: list[dict[str, Any]]
    base_dir: Path
    source: str
    extra: dict[str, Any] = field(default_factory=dict)  # other top-level keys of the line, e.g. "meta"

    def as_collator_input(self) -> dict[str, Any]:
        return {**self.extra, "messages": self.messages, "base_dir": self.base_dir, "source": self.source}


def _check_example(obj: Any, specs: Mapping[str, Any], base_dir: Path) -> list[dict[str, Any]]:
    """Validate one parsed line; returns its messages or raises PromptError/MediaError saying what is wrong."""
    from xmm.model.messages import parse_conversation

    if not isinstance(obj, dict) or "messages" not in obj:
        raise PromptError("a line must be a JSON object with a 'messages' list")
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        raise PromptError("'messages' must be a non-empty list")
    conv = parse_conversation(messages, specs, base_dir=base_dir)
    answers = [m for m in conv.messages if m["role"] == "assistant" and m["content"].strip()]
    if not answers:
        raise PromptError("no assistant answer to train on")
    for item in conv.media:
        item.check()  # existence/readability only; decoding happens at collate time (or never, with a cache hit)
    return messages


def read_manifest(path: str | Path, specs: Mapping[str, Any], bad: BadSamples) -> list[Example]:
    """Read one JSONL manifest; bad lines are recorded in ``bad`` and left out."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise TrainingError(f"cannot read manifest {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise TrainingError(f"manifest {path} is not UTF-8 text: {e}") from e
    base = path.resolve().parent
    out: list[Example] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad.record("invalid_json", f"{where}: {e.msg} at column {e.colno}", key=where)
            continue
        try:
            messages = _check_example(obj, specs, base)
        except MediaError as e:
            bad.record("unreadable_media", f"{where}: {e}", key=where)
            continue
        except PromptError as e:
            bad.record("invalid_example", f"{where}: {e}", key=where)
            continue
        extra = {k: v for k, v in obj.items() if k not in ("messages", "base_dir", "source", "media")}
        out.append(Example(messages, base, where, extra))
    return out


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

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Any:
        try:
            batch = self._collate(examples)
            batch.skipped = []
            return batch
        except (MediaError, PromptError):
            pass  # find the culprit(s) one by one; only on this rare path
        problems = [self._problem(ex) for ex in examples]
        skipped = [p for p in problems if p is not None]
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
