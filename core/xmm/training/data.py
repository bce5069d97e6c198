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

    def record(self, kind: str, message: str) -> None:
        """Count one bad sample; raise :class:`TrainingError` instead when the policy is ``fail``."""
        if self.on_bad_sample == "fail":
            raise TrainingError(f"bad sample ({kind}): {message} (on_bad_sample: fail)")
        self.counts[kind] += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)
        log.warning("skipped bad sample (%s): %s", kind, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_kind": dict(self.counts), "examples": list(self.examples)}


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
            bad.record("invalid_json", f"{where}: {e.msg} at column {e.colno}")
            continue
        try:
            messages = _check_example(obj, specs, base)
        except MediaError as e:
            bad.record("unreadable_media", f"{where}: {e}")
            continue
        except PromptError as e:
            bad.record("invalid_example", f"{where}: {e}")
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


class SafeCollator:
    """Wraps the model's collator: examples whose media cannot be decoded are recorded and dropped.

    ``needs_decode(item) -> bool`` says whether an item must be decoded now (False for a feature-cache hit, whose
    pixels are never needed); every other item is decoded here, before any model work. Returns ``None`` when no
    example of the batch is usable.
    """

    def __init__(self, collator: Callable[[Sequence[Any]], Any], bad: BadSamples, needs_decode: Callable[[Any], bool] | None = None) -> None:
        self.collator = collator
        self.bad = bad
        self.needs_decode = needs_decode or (lambda item: True)

    def _usable(self, example: Mapping[str, Any]) -> bool:
        try:
            batch = self.collator([example])
            for item in batch.media:
                if self.needs_decode(item):
                    item.load()
        except MediaError as e:
            self.bad.record("unreadable_media", f"{example.get('source', '?')}: {e}")
            return False
        except PromptError as e:
            self.bad.record("invalid_example", f"{example.get('source', '?')}: {e}")
            return False
        return True

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> Any:
        try:
            batch = self.collator(examples)
            for item in batch.media:
                if self.needs_decode(item):
                    item.load()
            return batch
        except (MediaError, PromptError):
            pass  # find the culprit(s) one by one; only on this rare path
        good = [ex for ex in examples if self._usable(ex)]
        if not good:
            return None
        batch = self.collator(good)
        for item in batch.media:
            if self.needs_decode(item):
                item.load()
        return batch
