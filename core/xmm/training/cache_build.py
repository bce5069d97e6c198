"""``build_cache``: fill the feature cache for every stage of a plan ahead of training (``xmm cache build``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from xmm.data import BadExample
from xmm.errors import MediaError, PromptError
from xmm.progress import Progress
from xmm.training.cache import CachedFeatureProvider, FeatureCache
from xmm.training.data import BadSamples, stage_dataset
from xmm.training.plan import StagePlan, load_plan

log = logging.getLogger(__name__)


@dataclass
class CacheReport:
    """Items seen (unique media per encoder), already cached, newly computed, and unusable ones."""

    items: int = 0
    cached: int = 0
    computed: int = 0
    bad: dict[str, Any] = field(default_factory=dict)
    cache_dir: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "cached": self.cached, "computed": self.computed, "bad_samples": self.bad,
                "cache_dir": self.cache_dir}


def build_cache(plan: StagePlan | str | Any, *, batch_size: int = 16, progress: bool = True, model: Any = None) -> CacheReport:
    """Encode every media item of every stage that uses the cache, once per (content, encoder) key.

    Encoders that a stage trains are skipped (their features change); a model may be passed in to reuse one.
    ``progress``: show the scan of the data and the encoding (:class:`xmm.progress.Progress`: a bar on a terminal,
    a line every ``XMM_PROGRESS_EVERY`` seconds elsewhere).
    """
    plan = load_plan(plan)
    if model is None:
        from xmm.training.context import build_model

        model = build_model(plan)
    if model.device.type == "cpu":
        from xmm.training.memory import tune_cpu_allocator

        tune_cpu_allocator()  # the encoder's large activations reuse heap memory batch after batch
    cache = FeatureCache(plan.cache_path)
    provider = CachedFeatureProvider(model, cache, compute=model.encode_media)
    bad = BadSamples(plan.on_bad_sample)
    collator = model.collator(padding_side="right", load_media=False)
    todo: dict[str, Any] = {}
    seen: set[str] = set()
    report = CacheReport(cache_dir=str(plan.cache_path))
    for si, stage in enumerate(plan.stages):
        if not stage.feature_cache:
            continue
        from xmm.training.selection import select
        from xmm.training.stage import ensure_lora

        ensure_lora(model, stage, si)  # so that `llm:lora` selectors resolve
        trained_encoders = {n.split(":", 1)[1] for n in _trained_components(model, stage.trainable, si, select)}
        dataset = stage_dataset(stage.data.train, model.specs, plan.resolve("."),
                                max_examples=stage.data.max_examples, source=plan.source)
        scan = Progress(len(dataset), desc=f"cache scan {stage.name}", unit="example", enabled=progress)
        for i in range(len(dataset)):
            scan.update(1)
            example = dataset[i]
            if isinstance(example, BadExample):
                bad.record(example.kind, example.message, key=example.key)
                continue
            try:
                batch = collator([example])
            except (MediaError, PromptError) as e:
                bad.record("invalid_example", f"{example['source']}: {e}")
                continue
            for item in batch.media:
                if item.modality in trained_encoders or not provider.cacheable(item.modality):
                    continue
                key = provider.key(item)
                if key in seen:
                    continue
                seen.add(key)
                report.items += 1
                if key in cache:
                    report.cached += 1
                else:
                    todo[key] = (item, example["source"])
        scan.close()
    keys = list(todo)
    bar = Progress(len(keys), desc="cache encode", unit="item", enabled=progress and bool(keys))
    import torch

    with torch.no_grad(), model.autocast():
        for start in range(0, len(keys), batch_size):
            chunk = []
            for key in keys[start : start + batch_size]:
                item, source = todo[key]
                try:
                    item.load()
                except MediaError as e:
                    bad.record("unreadable_media", f"{source}: {e}")
                    continue
                chunk.append(item)
            if chunk:
                provider(chunk)  # computes the misses and stores them
                report.computed += len(chunk)
            bar.update(min(batch_size, len(keys) - start))
    bar.close()
    cache.close()
    report.bad = bad.as_dict()
    return report


def _trained_components(model: Any, selectors: list[str], si: int, select: Any) -> list[str]:
    comps = dict(model.named_components())
    encoders = [k for k in comps if k.startswith("encoder:")]
    chosen = set(select(model, selectors, field_prefix=f"stages.{si}.trainable").names)
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for k in encoders:
        if any(names.get(id(p)) in chosen for p in comps[k].parameters()):
            out.append(k)
    return out
