"""Resuming a run: finding its latest checkpoint and putting the model, the run state and the RNG back where the
uninterrupted run had them, so that the result is bit-identical."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from xmm.errors import CheckpointError
from xmm.training.checkpointing import LoadedCheckpoint, TrainerState, latest_checkpoint, load_checkpoint, set_rng_state
from xmm.training.layout import CHECKPOINTS_DIR, LATEST
from xmm.training.plan import StagePlan
from xmm.training.plan_changes import checkpoint_plan_changes, report_plan_changes
from xmm.training.stage import ensure_lora
from xmm.training.weights import TRAINED_WEIGHTS, load_trained_weights

log = logging.getLogger("xmm.training")


def plan_fingerprint(plan: StagePlan) -> str:
    """A short hash of the plan's YAML (a checkpoint records the plan it was written under)."""
    return hashlib.sha256(plan.to_yaml().encode()).hexdigest()[:16]


def find_resume_checkpoint(plan: StagePlan, accelerator: Any) -> LoadedCheckpoint | None:
    """The run's latest checkpoint, or None (a fresh start) when it has none yet; warns when the plan or the number
    of processes changed since it was written."""
    root = plan.output_path / CHECKPOINTS_DIR
    path = latest_checkpoint(root)
    if path is None:
        if accelerator.is_main_process:
            log.warning("--resume: no checkpoint in %s yet; starting from the beginning", root)
        return None
    loaded = load_checkpoint(path)
    if not loaded.state.stage_done and _deepspeed(accelerator):
        raise CheckpointError(f"{path} is inside stage '{loaded.state.stage_name}': a DeepSpeed run continues only from "
                              "a stage's end checkpoint (its ZeRO optimiser state is partitioned over the processes "
                              "and not saved); run again without --resume, or write the name of the last stage-* "
                              f"checkpoint into {root / LATEST}")
    if loaded.state.plan_fingerprint and loaded.state.plan_fingerprint != plan_fingerprint(plan):
        changes = checkpoint_plan_changes(path, plan, stage_index=loaded.state.stage_index,
                                          stage_done=loaded.state.stage_done)
        if changes is None:
            log.warning("resuming %s with a plan that differs from the one it was started with", path)
        report_plan_changes(changes, path)
    if loaded.state.world_size != accelerator.num_processes:
        log.warning("resuming a run of %d processes with %d; batches are the same, the split differs",
                    loaded.state.world_size, accelerator.num_processes)
    return loaded


def _deepspeed(accelerator: Any) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).upper().endswith("DEEPSPEED")


def restore_run(plan: StagePlan, model: Any, loaded: LoadedCheckpoint, accelerator: Any) -> tuple[TrainerState, set[str]]:
    """Give ``model`` the structure (LoRA) and trained weights of ``loaded``; returns the run state to continue
    from and the names of the parameters trained so far. After a finished stage the RNG is the one the
    uninterrupted run had there (the next stage's LoRA init draws from it)."""
    state = loaded.state
    state.world_size = accelerator.num_processes
    for i in range(state.stage_index + 1):
        ensure_lora(model, plan.stages[i], i)  # the structure the checkpoint was saved with
    trained = load_trained_weights(model, loaded.path / TRAINED_WEIGHTS)
    if state.stage_done:
        rng = loaded.rng_state(accelerator.process_index)
        if rng is None:
            raise CheckpointError(f"{loaded.path}: no RNG state for process {accelerator.process_index}")
        set_rng_state(rng)
    return state, trained


def first_stage(state: TrainerState) -> int:
    """The stage a resumed run continues with (the next one when the checkpoint ended a stage)."""
    return state.stage_index + (1 if state.stage_done else 0)
