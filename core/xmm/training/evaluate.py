"""``evaluate``: generate the assistant answer of every manifest example and score it against the reference.

The prompt of an example is every message before its last assistant message; the reference is that message's text.
Generation is greedy and batched. ``exact`` and ``contains`` compare normalised text (lowercase, no punctuation,
collapsed whitespace); ``wer`` is the corpus word error rate (lower is better).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError, MediaError, PromptError
from xmm.training.data import BadSamples, Example, read_manifest
from xmm.training.metrics import METRICS, score

log = logging.getLogger(__name__)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = [p.get("text", "") for p in content or [] if isinstance(p, Mapping) and p.get("type") == "text"]
    return "".join(parts)


def split_example(example: Example) -> tuple[list[dict[str, Any]], str]:
    """(prompt messages, reference answer text) of one example."""
    msgs = example.messages
    last = max(i for i, m in enumerate(msgs) if m.get("role") == "assistant")
    return msgs[:last], _text(msgs[last].get("content"))


def evaluate(
    model: Any,
    manifest: str | os.PathLike[str],
    metric: str = "exact",
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    limit: int | None = None,
    feature_cache: Any = None,
    return_predictions: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on a JSONL manifest: ``{"n", "score", "metric", "skipped"}`` (+ ``predictions``).

    ``n`` counts scored examples; lines or media that cannot be used are counted in ``skipped``. ``feature_cache``
    (a :class:`~xmm.training.cache.FeatureCache` or a folder) serves frozen-encoder features from disk.
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}", field="metric")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError("batch_size and max_new_tokens must be >= 1")
    bad = BadSamples("skip")
    examples = read_manifest(Path(manifest), model.specs, bad)
    if limit is not None:
        examples = examples[:limit]
    previous = model.feature_provider
    if feature_cache is not None:
        from xmm.training.cache import CachedFeatureProvider, FeatureCache

        cache = feature_cache if isinstance(feature_cache, FeatureCache) else FeatureCache(feature_cache)
        model.feature_provider = CachedFeatureProvider(model, cache, compute=model.encode_media)
    was_training = model.training
    model.eval()
    preds: list[str] = []
    refs: list[str] = []
    kept: list[Example] = []
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            texts = _generate(model, chunk, max_new_tokens, bad)
            for ex, text in zip(chunk, texts):
                if text is None:
                    continue
                preds.append(text)
                refs.append(split_example(ex)[1])
                kept.append(ex)
    finally:
        model.feature_provider = previous
        model.train(was_training)
    result: dict[str, Any] = {"n": len(preds), "score": score(metric, preds, refs), "metric": metric,
                              "skipped": bad.total}
    if return_predictions:
        result["predictions"] = [{"source": ex.source, "prediction": p, "reference": r} for ex, p, r in zip(kept, preds, refs)]
    return result


def _texts(model: Any, convs: list[dict[str, Any]], max_new_tokens: int) -> list[str]:
    # scores read the text only: no decoder runs (a diffusion pipeline per signal group would cost minutes)
    return list(model.generate(convs, max_new_tokens=max_new_tokens, do_sample=False, run_decoders=False).texts)


def _generate(model: Any, chunk: list[Example], max_new_tokens: int, bad: BadSamples) -> list[str | None]:
    convs = [{"messages": split_example(ex)[0], "base_dir": ex.base_dir} for ex in chunk]
    try:
        return _texts(model, convs, max_new_tokens)
    except (MediaError, PromptError):
        pass
    # one bad example must not cost the others their score: retry them one by one
    out: list[str | None] = []
    for ex, conv in zip(chunk, convs):
        try:
            out.append(_texts(model, [conv], max_new_tokens)[0])
        except (MediaError, PromptError) as e:
            bad.record("unusable_example", f"{ex.source}: {e}", key=ex.source)
            out.append(None)
    return out
