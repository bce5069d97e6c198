"""Sizing a plan to this machine: time a few optimiser steps of every stage, then say how long the plan takes.

:func:`time_stages` prepares each stage the way training does (:func:`~xmm.training.stage.prepare_stage`) and runs its
first ``steps + 1`` steps twice from the start of its data: the first pass encodes the media the feature cache lacks,
the second finds them there. The second pass's median step (batch loading included) is the stage's time per step once
the cache is warm; the first pass's extra time per media item estimates the one-off encoding cost. Features computed
here stay in the plan's cache, so the real run does not encode those items again. The timing trains a throwaway copy
of the model; nothing is written to the run folder.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from xmm.progress import Progress
from xmm.training.plan import StagePlan

log = logging.getLogger(__name__)


@dataclass
class StageTiming:
    """One stage measured: seconds per optimiser step with warm features, the warm-up step, the examples it reads,
    the samples one step sees, the media items the warm-up step encoded and the objectives that applied (none: the
    stage cannot train this model, e.g. ``guided_answer`` without a question-guided bridge)."""

    name: str
    s_per_step: float
    first_step_s: float
    examples: int
    samples_per_step: int
    media_items: int
    objectives: tuple[str, ...] = ()  # those that gave a loss on the stage's batches (the others do not apply)


@dataclass
class PlanTiming:
    """Every stage's :class:`StageTiming`, and the estimated encoding seconds per media item (None: nothing was
    encoded, e.g. the cache already held the features)."""

    stages: dict[str, StageTiming] = field(default_factory=dict)
    encode_s_per_item: float | None = None

    @property
    def seconds_per_step(self) -> dict[str, float]:
        return {name: t.s_per_step for name, t in self.stages.items()}

    def encode_seconds(self, steps: Mapping[str, int]) -> float:
        """The one-off encoding of the media the stages will meet (each stage's examples, at most the samples its
        ``steps`` draw; stages share one cache, so the largest counts), at :attr:`encode_s_per_item`."""
        if not self.encode_s_per_item:
            return 0.0
        items = max((min(t.examples, steps.get(n, 0) * t.samples_per_step) for n, t in self.stages.items()
                     if t.media_items), default=0)
        return items * self.encode_s_per_item

    def training_seconds(self, steps: Mapping[str, int]) -> float:
        return sum(steps[name] * t.s_per_step for name, t in self.stages.items() if name in steps)


def time_stages(plan: StagePlan, *, steps: int = 3, model: Any = None, progress: bool = True) -> PlanTiming:
    """Time every stage of ``plan`` on this machine (see the module docstring); ``model``: a model built from the plan
    to reuse (its trainable parts are trained a few steps)."""
    import torch

    from xmm.errors import TrainingError
    from xmm.training.context import RunContext, build_model
    from xmm.training.data import BadSamples
    from xmm.training.distributed import accelerator_session
    from xmm.training.stage import prepare_stage

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    timing = PlanTiming()
    encode: list[float] = []
    with accelerator_session() as accelerator:
        model = model if model is not None else build_model(plan, accelerator.device)
        run = RunContext.open(plan, model, accelerator, BadSamples("skip"))
        bar = Progress(len(plan.stages) * 2 * (steps + 1), desc="timing steps", unit="step", enabled=progress)
        try:
            for index, config in enumerate(plan.stages):
                with prepare_stage(run, index) as stage:
                    # pass 1 (cold): the first steps' batches, encoding what the cache lacks; pass 2 (warm): the same
                    # batches again from the start of the data, loading included, as training meets them once
                    # the cache is warm
                    try:
                        cold_s, items, applied = _steps(stage, run, accelerator, steps + 1, bar)
                    except TrainingError as e:  # none of the stage's objectives applies to this model
                        log.info("stage '%s' cannot train this model: %s", config.name, e)
                        timing.stages[config.name] = StageTiming(config.name, 0.0, 0.0, len(stage.data.dataset),
                                                                 stage.samples_per_step, 0)
                        bar.update(2 * (steps + 1))
                        continue
                    warm_s, _, _ = _steps(stage, run, accelerator, steps + 1, bar)
                    # the median: one step slowed by another process on a shared machine does not count
                    s_per_step = sorted(warm_s)[len(warm_s) // 2]
                    timing.stages[config.name] = StageTiming(config.name, s_per_step, cold_s[0],
                                                             len(stage.data.dataset), stage.samples_per_step, items,
                                                             applied)
                    if items and stage.config.feature_cache and sum(cold_s) > sum(warm_s):
                        encode.append((sum(cold_s) - sum(warm_s)) / items)
                run.cache.flush()
        finally:
            bar.close()
            run.close()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    timing.encode_s_per_item = max(encode) if encode else None
    return timing


def _steps(stage: Any, run: Any, accelerator: Any, n: int, bar: Progress) -> tuple[list[float], int, tuple[str, ...]]:
    """Run ``n`` optimiser steps from the start of the stage's data; returns each step's wall seconds (loading its
    batches included), the distinct media items the cache lacked before and the objectives that gave a loss."""
    from xmm.training.stage_data import Batches
    from xmm.training.step import next_micro_batches, optimizer_step

    stage.batches = Batches(stage.data.loader, stage.data.sampler, 0, 0)
    times, missing, applied = [], set(), set()
    for _ in range(n):
        t0 = time.perf_counter()
        micro = next_micro_batches(stage, run.bad)
        t1 = time.perf_counter()
        if stage.config.feature_cache:  # not timed: which items this step will have to encode
            missing.update(k for b in micro if b is not None for it in b.media
                           if run.provider.cacheable(it.modality) and (k := run.provider.key(it)) not in run.cache)
        t2 = time.perf_counter()
        losses = optimizer_step(stage, micro, accelerator)
        times.append(time.perf_counter() - t0 - (t2 - t1))
        applied.update(k.removeprefix("loss/") for k in losses.parts)
        bar.update(1)
    return times, len(missing), tuple(sorted(applied))


def describe_timing(timing: PlanTiming) -> str:
    """One line per stage: ``align: 1.31 s/step (batch 16; warm-up step 6.2 s)``, and the encoding estimate."""
    lines = [f"  {t.name}: {t.s_per_step:.3g} s/step (batch {t.samples_per_step}; warm-up step {t.first_step_s:.3g} s)"
             if t.objectives else f"  {t.name}: none of its objectives applies to this model" for t in timing.stages.values()]
    if timing.encode_s_per_item:
        lines.append(f"  encoding: ~{timing.encode_s_per_item:.3g} s per media item, once (kept in the feature cache)")
    return "\n".join(lines)


def fit_steps(steps: Mapping[str, int], timing: PlanTiming, seconds: float) -> tuple[dict[str, int], float]:
    """The stages' steps scaled by one factor so that training and encoding fit in ``seconds`` (never scaled up; at
    least 1 step a stage); returns ``(steps, factor)``. Raises ``ValueError`` when encoding alone does not fit."""
    encode = timing.encode_seconds(steps)
    train = timing.training_seconds(steps)
    if encode + train <= seconds:
        return dict(steps), 1.0
    if encode >= seconds:
        raise ValueError(f"encoding the data alone takes about {math.ceil(encode / 60)} min")
    factor = (seconds - encode) / train
    return {name: max(1, math.floor(n * factor)) for name, n in steps.items()}, factor
