"""``xmm data check``: walk every record of a source ahead of training and report what training would meet.

Counts (records, usable, bad by kind), the formats seen, media per modality, turns, token lengths (the LLM's chat
template rendered and tokenised as the collator does; each media item counts its placeholder token only, its bridge
adds its own tokens at training time) and every bad sample with its reason. With ``decode`` every media item is
also decoded by its modality's loader, which is what finds corrupt files.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xmm.data.dataset import BadExample, DatasetChain, XmmDataset
from xmm.data.errors import DataError
from xmm.errors import MediaError, PromptError
from xmm.modality import ModalitySpec


@dataclass
class CheckReport:
    """What :func:`check_dataset` found; :meth:`as_dict` is the ``--json`` output."""

    sources: list[str]
    records: int = 0
    usable: int = 0
    bad: list[BadExample] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)
    media_items: Counter[str] = field(default_factory=Counter)
    examples_with: Counter[str] = field(default_factory=Counter)
    turns: Counter[int] = field(default_factory=Counter)
    token_lengths: dict[str, float] | None = None
    answer_tokens: dict[str, float] | None = None
    tokenizer: str | None = None

    @property
    def by_kind(self) -> dict[str, int]:
        return dict(Counter(b.kind for b in self.bad))

    def as_dict(self) -> dict[str, Any]:
        return {
            "sources": self.sources, "records": self.records, "usable": self.usable,
            "bad": {"total": len(self.bad), "by_kind": self.by_kind,
                    "samples": [{"kind": b.kind, "where": b.key, "message": b.message} for b in self.bad]},
            "formats": dict(self.formats), "media_items": dict(self.media_items),
            "examples_with": dict(self.examples_with), "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "token_lengths": self.token_lengths, "answer_tokens": self.answer_tokens, "tokenizer": self.tokenizer,
        }

    def summary(self, show_bad: int = 50) -> str:
        """Human-readable report; lists the first ``show_bad`` bad samples."""
        lines = [f"{', '.join(self.sources)}",
                 f"  records: {self.records:,}   usable: {self.usable:,}   bad: {len(self.bad):,}"
                 + (f" {self.by_kind}" if self.bad else ""),
                 f"  formats: {dict(self.formats)}"]
        if self.media_items:
            per = ", ".join(f"{m}: {n:,} items in {self.examples_with[m]:,} examples" for m, n in
                            sorted(self.media_items.items()))
            lines.append(f"  media: {per}")
        else:
            lines.append("  media: none")
        if self.turns:
            lines.append(f"  turns per example: {dict(sorted(self.turns.items()))}")
        if self.token_lengths:
            t = self.token_lengths
            lines.append(f"  tokens per example ({self.tokenizer}; placeholders count 1): min {t['min']:.0f}, "
                         f"mean {t['mean']:.1f}, p50 {t['p50']:.0f}, p95 {t['p95']:.0f}, max {t['max']:.0f}")
        if self.answer_tokens:
            a = self.answer_tokens
            lines.append(f"  answer tokens: min {a['min']:.0f}, mean {a['mean']:.1f}, max {a['max']:.0f}")
        for b in self.bad[:show_bad]:
            lines.append(f"  BAD {b.kind}: {b.message}")
        if len(self.bad) > show_bad:
            lines.append(f"  ... and {len(self.bad) - show_bad:,} more (--json lists all)")
        return "\n".join(lines)


def _stats(values: array) -> dict[str, float] | None:
    if not len(values):
        return None
    a = np.frombuffer(values, dtype=np.int32) if values.typecode == "i" else np.asarray(values)
    return {"min": float(a.min()), "mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def placeholder_tokenizer(llm: str | None, specs: Mapping[str, ModalitySpec]) -> Any:
    """The tokenizer of ``llm`` (default SmolLM2; local or cached only) with each modality's placeholder added as
    one special token, as :class:`~xmm.model.MultimodalLM` adds them."""
    from transformers import AddedToken, AutoTokenizer

    from xmm.llm import resolve_llm_dir

    folder, _ = resolve_llm_dir(llm, download=False)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens([AddedToken(s.placeholder, special=True, normalized=False) for s in specs.values()],
                   special_tokens=True)
    return tok


def check_dataset(ds: XmmDataset | DatasetChain, *, tokenizer: Any = None, decode: bool = True,
                  on_record: Callable[[int], None] | None = None) -> CheckReport:
    """Convert and check every record of ``ds``; with ``tokenizer`` also measure token lengths, with ``decode``
    also decode every media item. ``on_record(i)`` is called after each record (progress)."""
    from xmm.model.collator import IGNORE_INDEX, MultimodalCollator
    from xmm.model.messages import parse_conversation

    parts = ds.datasets if isinstance(ds, DatasetChain) else [ds]
    report = CheckReport([p.source.path for p in parts])
    collator = MultimodalCollator(tokenizer, parts[0].specs, load_media=False) if tokenizer is not None else None
    if tokenizer is not None:
        report.tokenizer = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    lengths, answers = array("i"), array("i")
    n = 0
    for part in parts:
        for i in range(len(part)):
            n += 1
            try:
                ex = part.example(i)
                media = parse_conversation(ex.messages, part.specs).media
                if decode:
                    for item in media:
                        item.load()
                if collator is not None:
                    ids, labels, _ = collator.encode_example(ex.as_collator_input())
            except DataError as e:
                report.bad.append(BadExample(e.kind, str(e), e.source or part.where(i)))
            except (MediaError, PromptError) as e:
                kind = "unreadable_media" if isinstance(e, MediaError) else "invalid_example"
                where = part.where(i)
                report.bad.append(BadExample(kind, f"{where}: {e}", where))
            else:
                report.usable += 1
                report.formats[ex.style] += 1
                report.turns[len(ex.messages)] += 1
                kinds = Counter(item.modality for item in media)
                report.media_items.update(kinds)
                report.examples_with.update(kinds.keys())
                if collator is not None:
                    lengths.append(len(ids))
                    answers.append(sum(1 for t in labels if t != IGNORE_INDEX))
            if on_record is not None:
                on_record(n)
    report.records = n
    report.token_lengths, report.answer_tokens = _stats(lengths), _stats(answers)
    return report
