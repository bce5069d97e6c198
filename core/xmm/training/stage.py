"""Preparing a stage: what it trains, its data, optimiser, objectives and the model changes it runs under.

:func:`prepare_stage` does everything a stage needs before its first step and returns a :class:`PreparedStage`,
a context manager that applies the stage's changes to the model on entry and undoes them on exit
(:class:`~xmm.training.overrides.StageOverrides`). The training loop, ``build_cache`` and the benchmarks all
set stages up through it::

    with prepare_stage(run, index) as stage:
        while stage.step < stage.total_steps:
            losses = optimizer_step(stage, next_micro_batches(stage, run.bad), run.accelerator)
            stage.step += 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from xmm.errors import CheckpointError, ConfigError
from xmm.training.autobatch import auto_batch_stage
from xmm.training.checkpointing import LoadedCheckpoint, seed_everything, set_rng_state
from xmm.training.context import RunContext
from xmm.training.distributed import prepare_stage_module
from xmm.training.optim import build_optimizer, build_scheduler, param_groups, rebase_lrs
from xmm.training.overrides import StageOverrides
from xmm.training.plan import StageConfig
from xmm.training.selection import Selection, apply_selection, select
from xmm.training.stage_data import Batches, StageData, build_stage_data
from xmm.training.step import StageModule, WeightedObjective, stage_objectives


def ensure_lora(model: Any, stage: StageConfig, index: int) -> None:
    """Add the stage's LoRA adapters (once); a different LoRA already on the model is a config error."""
    if stage.lora is None:
        return
    if model.lora_settings is None:
        model.add_lora(stage.lora)
    elif model.lora_settings != stage.lora:
        raise ConfigError(
            f"the model already has LoRA {model.lora_settings.model_dump()}; stage '{stage.name}' asks for "
            f"{stage.lora.model_dump()} (LoRA is added once per run)", field=f"stages.{index}.lora",
        )


@dataclass
class PreparedStage:
    """Stage ``index`` ready to train. ``step``: optimiser steps done in this stage (the loop advances it);
    ``module``: the stage's forward as the accelerator wrapped it; ``params``: the trained parameters."""

    index: int
    config: StageConfig
    selection: Selection
    data: StageData
    batches: Batches
    optimizer: Any
    scheduler: Any
    objectives: list[WeightedObjective]
    module: Any
    params: list[nn.Parameter]
    total_steps: int
    step: int
    resumed: bool
    overrides: StageOverrides

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def samples_per_step(self) -> int:
        """Examples one optimiser step sees over all processes."""
        return self.config.batch_size * self.config.grad_accum

    def __enter__(self) -> PreparedStage:
        self.overrides.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.batches.close()
        self.overrides.__exit__(*exc)


def prepare_stage(run: RunContext, index: int, *, resume_from: LoadedCheckpoint | None = None) -> PreparedStage:
    """Set stage ``index`` of ``run.plan`` up: LoRA, the trainable selection (everything else frozen), data, optimiser,
    scheduler, objectives and the accelerator-wrapped forward; with ``resume_from`` (a checkpoint inside this stage)
    the optimiser, scheduler, RNG and data position continue from it. Nothing on the model changes for the stage's
    duration until the returned object is entered."""
    plan, model, accelerator = run.plan, run.model, run.accelerator
    stage = plan.stages[index]
    ensure_lora(model, stage, index)
    selection = select(model, stage.trainable, field_prefix=f"stages.{index}.trainable", source=plan.source)
    if not selection.params:
        raise ConfigError(f"stage '{stage.name}' selects no parameters to train", field=f"stages.{index}.trainable",
                          source=plan.source)
    apply_selection(model, selection)
    run.trained.update(selection.names)
    run.provider.reset()  # this stage's trainable encoders bypass the cache
    run.provider.warm()  # before the loader's workers fork: they then never hash weights on a GPU
    # every process sees what the others wrote before this stage, and of this stage only its own writes
    run.cache.enter_scope({"run": str(plan.output_path), "stage": stage.name, "rank": accelerator.process_index},
                          barrier=accelerator.wait_for_everyone)

    if stage.batch_size == "auto":
        stage = auto_batch_stage(run, index, stage, resuming=resume_from is not None)
    data = build_stage_data(run, index, stage)
    total_steps = stage.max_steps or max(1, math.floor(stage.epochs * data.batches_per_epoch / stage.grad_accum))
    groups = param_groups(model, selection, stage.optimizer, field_prefix=f"stages.{index}.optimizer", source=plan.source)
    optimizer = build_optimizer(groups, stage.optimizer)
    scheduler = build_scheduler(optimizer, total_steps, stage.schedule)
    objectives = stage_objectives(stage)
    module, optimizer = prepare_stage_module(accelerator, StageModule(model, objectives, stage.name), optimizer, stage, index)
    step, epoch, batch = _start_position(run, index, optimizer, scheduler, resume_from)

    overrides = StageOverrides(model, module, mixed_precision=stage.mixed_precision,
                               feature_provider=run.provider if stage.feature_cache else None,
                               gradient_checkpointing=stage.gradient_checkpointing, compile=stage.compile)
    return PreparedStage(index, stage, selection, data, Batches(data.loader, data.sampler, epoch, batch), optimizer,
                         scheduler, objectives, module, list(selection.params.values()), total_steps, step,
                         resume_from is not None, overrides)


def _start_position(run: RunContext, index: int, optimizer: Any, scheduler: Any,
                    resume_from: LoadedCheckpoint | None) -> tuple[int, int, int]:
    """(step, epoch, batch) to start from; restores the checkpoint's optimiser, scheduler and RNG when resuming."""
    rank = run.accelerator.process_index
    if resume_from is None:
        # the stage's randomness (dropout, ITM negatives) is a function of the seed and the stage alone
        seed_everything(run.plan.seed + 104729 * (index + 1) + rank)
        return 0, 0, 0
    opt_state, sched_state = resume_from.optimizer_state(), resume_from.scheduler_state()
    if opt_state is None or sched_state is None:
        raise CheckpointError(f"{resume_from.path}: optimizer/scheduler state missing")
    plan_lrs = list(scheduler.base_lrs)  # the plan's rates: a resume applies a changed lr (xmm.training.plan_changes)
    optimizer.load_state_dict(opt_state)
    scheduler.load_state_dict(sched_state)
    rebase_lrs(optimizer, scheduler, plan_lrs)
    rng = resume_from.rng_state(rank)
    if rng is None:
        raise CheckpointError(f"{resume_from.path}: no RNG state for process {rank}")
    set_rng_state(rng)
    state = resume_from.state
    return state.step, state.epoch, state.batch
