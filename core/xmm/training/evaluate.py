"""``evaluate``: generate the assistant answer of every manifest example and score it against the reference;
``probe_off_task``: how often the model answers a prompt its training never asked with one of the training answers.

The prompt of an example is every message before its last assistant message; the reference is that message's text.
Generation is greedy and batched; answers are stripped the way every xmm answer is
(:func:`xmm.model.generation.answer_text`). ``exact`` and ``contains`` compare normalised text (lowercase, no
punctuation, collapsed whitespace); ``wer`` is the corpus word error rate (lower is better). The result also breaks
the score down by task (``meta.task``) and by expected answer (:mod:`xmm.training.eval_report`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xmm.errors import ConfigError, MediaError, PromptError
from xmm.progress import Progress
from xmm.training.data import BadSamples, Example, read_manifest
from xmm.training.eval_report import breakdown, prediction_record
from xmm.training.metrics import METRICS, normalize, score

log = logging.getLogger(__name__)

# prompts no task-specific training set asks; {modality} is the attached item's modality
OFF_TASK_PROMPTS = ("Describe this {modality} in one sentence.", "What is the capital of France?")


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


def example_task(example: Example) -> str | None:
    """The example's ``meta.task`` (None when it has none)."""
    meta = example.extra.get("meta")
    task = meta.get("task") if isinstance(meta, Mapping) else None
    return None if task is None else str(task)


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
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on a JSONL manifest: ``{"n", "score", "metric", "skipped"}``, ``by_task`` (when examples
    name a ``meta.task``), ``by_answer`` (exact / contains) and, with ``return_predictions``, ``predictions`` (one
    record per scored example, see :mod:`xmm.training.eval_report`).

    ``n`` counts scored examples; lines or media that cannot be used are counted in ``skipped``. ``feature_cache``
    (a :class:`~xmm.training.cache.FeatureCache` or a folder) serves frozen-encoder features from disk.
    ``progress``: show the examples done (a bar on a terminal, periodic lines elsewhere).
    """
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}", field="metric")
    if batch_size < 1 or max_new_tokens < 1:
        raise ConfigError("batch_size and max_new_tokens must be >= 1")
    bad = BadSamples("skip")
    examples = read_manifest(Path(manifest), model.specs, bad)
    if limit is not None:
        examples = examples[:limit]
    records: list[dict[str, Any]] = []
    with _features_from(model, feature_cache), Progress(len(examples), desc="eval", unit="example",
                                                         enabled=progress) as bar:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            texts = _generate(model, [_conversation(ex) for ex in chunk], [ex.source for ex in chunk],
                              max_new_tokens, bad)
            for ex, text in zip(chunk, texts):
                if text is not None:
                    prompt, reference = split_example(ex)
                    records.append(prediction_record(ex.source, example_task(ex), prompt, reference, text, metric))
            bar.update(len(chunk))
    result: dict[str, Any] = {"n": len(records), "metric": metric, "skipped": bad.total,
                              "score": score(metric, [r["answer"] for r in records], [r["expected"] for r in records])}
    result.update(breakdown(records, metric))
    if return_predictions:
        result["predictions"] = records
    return result


def probe_off_task(
    model: Any,
    manifest: str | os.PathLike[str],
    *,
    examples: int = 10,
    prompts: Sequence[str] = OFF_TASK_PROMPTS,
    labels: Sequence[str] | None = None,
    max_new_tokens: int = 24,
    batch_size: int = 8,
    feature_cache: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Ask each of ``prompts`` about the media of the first ``examples`` examples of ``manifest`` that have media, and
    count the answers that are one of ``labels`` (default: the manifest's expected answers), normalised. A model whose
    bridge learned to answer its training question whatever is asked scores high; the frozen LLM's own manners
    score 0. Returns ``{n, label_answers, label_rate, labels, by_prompt: {prompt: {n, label_answers, example}}}``."""
    if examples < 1:
        raise ConfigError(f"must be >= 1, got {examples}", field="examples")
    bad = BadSamples("skip")
    rows = read_manifest(Path(manifest), model.specs, bad)
    known = {normalize(x) for x in (labels if labels is not None else [split_example(ex)[1] for ex in rows])} - {""}
    media = [(ex, parts) for ex in rows if (parts := _media_parts(ex))][:examples]
    asks = [(prompt, ex, parts) for prompt in prompts for ex, parts in media]
    by_prompt: dict[str, dict[str, Any]] = {}  # prompt as asked (modality filled in) -> counts
    with _features_from(model, feature_cache), Progress(len(asks), desc="eval probe", unit="prompt",
                                                         enabled=progress) as bar:
        for start in range(0, len(asks), batch_size):
            chunk = asks[start : start + batch_size]
            asked = [prompt.format(modality=parts[0]["type"]) for prompt, _, parts in chunk]
            convs = [{"messages": [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}],
                      "base_dir": ex.base_dir} for text, (_, ex, parts) in zip(asked, chunk)]
            texts = _generate(model, convs, [ex.source for _, ex, _ in chunk], max_new_tokens, bad)
            for prompt, text in zip(asked, texts):
                if text is None:
                    continue
                row = by_prompt.setdefault(prompt, {"n": 0, "label_answers": 0, "example": None})
                row["n"] += 1
                row["label_answers"] += normalize(text) in known
                if row["example"] is None:
                    row["example"] = text
            bar.update(len(chunk))
    n = sum(r["n"] for r in by_prompt.values())
    hits = sum(r["label_answers"] for r in by_prompt.values())
    return {"n": n, "label_answers": hits, "label_rate": hits / n if n else 0.0, "labels": len(known),
            "by_prompt": by_prompt}


def _media_parts(example: Example) -> list[dict[str, Any]]:
    """The media parts of the example's first user message that has any."""
    for m in split_example(example)[0]:
        content = m.get("content")
        if m.get("role") == "user" and not isinstance(content, str):
            parts = [dict(p) for p in content or [] if isinstance(p, Mapping) and p.get("type") != "text"]
            if parts:
                return parts
    return []


def _conversation(example: Example) -> dict[str, Any]:
    conv: dict[str, Any] = {"messages": split_example(example)[0], "base_dir": example.base_dir}
    if example.extra.get("allow_outside_paths"):
        conv["allow_outside_paths"] = True
    return conv


class _features_from:  # noqa: N801 - used as a context manager, like contextlib's lower-case helpers
    """Evaluate with frozen-encoder features from ``cache`` (None: computed), in eval mode; both undone on exit."""

    def __init__(self, model: Any, cache: Any) -> None:
        self.model, self.cache = model, cache

    def __enter__(self) -> None:
        self.previous, self.was_training = self.model.feature_provider, self.model.training
        if self.cache is not None:
            from xmm.training.cache import CachedFeatureProvider, FeatureCache

            cache = self.cache if isinstance(self.cache, FeatureCache) else FeatureCache(self.cache)
            self.model.feature_provider = CachedFeatureProvider(self.model, cache, compute=self.model.encode_media)
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.feature_provider = self.previous
        self.model.train(self.was_training)


def _texts(model: Any, convs: list[dict[str, Any]], max_new_tokens: int) -> list[str]:
    # scores read the text only: no decoder runs (a diffusion pipeline per signal group would cost minutes); a row
    # stuck repeating itself is ended and cut back to one copy (xmm.model.decoding.RepetitionGuard)
    return list(model.generate(convs, max_new_tokens=max_new_tokens, do_sample=False, run_decoders=False,
                               repetition_guard=True).texts)


def _generate(model: Any, convs: list[dict[str, Any]], sources: list[str], max_new_tokens: int,
              bad: BadSamples) -> list[str | None]:
    try:
        return _texts(model, convs, max_new_tokens)
    except (MediaError, PromptError):
        pass
    # one bad example must not cost the others their score: retry them one by one
    out: list[str | None] = []
    for source, conv in zip(sources, convs):
        try:
            out.append(_texts(model, [conv], max_new_tokens)[0])
        except (MediaError, PromptError) as e:
            bad.record("unusable_example", f"{source}: {e}", key=source)
            out.append(None)
    return out
