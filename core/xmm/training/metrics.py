"""Answer-scoring metrics for ``xmm eval``: normalised exact match, containment and word error rate."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

from xmm.errors import ConfigError

_PUNCT = re.compile(r"[^\w\s]", re.UNICODE)
_SPACE = re.compile(r"\s+")

METRICS = ("exact", "contains", "wer")


def normalize(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace: ``"  The Red, circle! "`` -> ``"the red circle"``."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCT.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def contains(prediction: str, reference: str) -> float:
    """1.0 when the normalised reference occurs in the normalised prediction on word boundaries."""
    pred, ref = f" {normalize(prediction)} ", f" {normalize(reference)} "
    return float(ref.strip() != "" and ref in pred)


def edit_distance(hyp: Sequence[str], ref: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (substitutions, insertions, deletions all cost 1)."""
    prev = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        cur = [i] + [0] * len(ref)
        for j, r in enumerate(ref, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r))
        prev = cur
    return prev[-1]


def word_errors(prediction: str, reference: str) -> tuple[int, int]:
    """(word edit distance, reference word count) after normalisation."""
    ref = normalize(reference).split()
    return edit_distance(normalize(prediction).split(), ref), len(ref)


def wer(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words (0.0 for an empty reference set)."""
    if len(predictions) != len(references):
        raise ValueError(f"wer: {len(predictions)} predictions for {len(references)} references")
    errors = words = 0
    for p, r in zip(predictions, references):
        e, n = word_errors(p, r)
        errors += e
        words += n
    if words == 0:
        return 0.0 if errors == 0 else float(errors)
    return errors / words


def score(metric: str, predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus score: mean exact/contains accuracy, or corpus WER (lower is better)."""
    if metric == "wer":
        return wer(predictions, references)
    per_item: dict[str, Callable[[str, str], float]] = {"exact": exact_match, "contains": contains}
    if metric not in per_item:
        raise ConfigError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}", field="metric")
    if not predictions:
        return 0.0
    return sum(per_item[metric](p, r) for p, r in zip(predictions, references)) / len(predictions)
