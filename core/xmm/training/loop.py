"""The staged training run on Hugging Face ``accelerate``.

``train(plan)`` builds the model, then runs each stage: :func:`~xmm.training.stage.prepare_stage` sets it up (LoRA,
freezing, data, optimiser, the model changes it trains under), and :func:`run_stage` steps it with gradient
accumulation, clipping, logging and checkpoints, then evaluates it. ``torchrun --nproc_per_node N xmm train
PLAN.yaml`` runs this same code in every process (:mod:`xmm.training.distributed`).

Pieces: :mod:`~xmm.training.context` (what stages share), :mod:`~xmm.training.stage` (preparing a stage),
:mod:`~xmm.training.step` (one optimiser step), :mod:`~xmm.training.reporting` (logs and progress),
:mod:`~xmm.training.resume` and :mod:`~xmm.training.weights` (restarting bit-identically).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.threads import threads_for
from xmm.training.checkpointing import CheckpointWriter, LoadedCheckpoint, TrainerState, write_json
from xmm.training.context import RunContext, build_model
from xmm.training.data import BadSamples
from xmm.training.distributed import (
    accelerator_session,
    check_ranks_agree,
    describe_distributed,
    gather_bad,
    shard_frozen_llm,
    trained_weights_gathered,
    whole_model,
)
from xmm.training.layout import CHECKPOINTS_DIR, EVAL_FILE, LOSS_CURVE, MODEL_DIR, PLAN_FILE, SUMMARY_FILE
from xmm.training.logging import RunLogger, plot_loss_curve, stage_summaries
from xmm.training.memory import tune_cpu_allocator
from xmm.training.plan import StagePlan, load_plan
from xmm.training.plan_changes import checkpoint_plan_changes
from xmm.training.reporting import StageReporter
from xmm.training.resume import find_resume_checkpoint, first_stage, plan_fingerprint, restore_run
from xmm.training.stage import PreparedStage, ensure_lora, prepare_stage
from xmm.training.step import StageModule, next_micro_batches, optimizer_step
from xmm.training.weights import TRAINED_WEIGHTS, load_trained_weights, save_trained_weights

__all__ = [
    "TRAINED_WEIGHTS",
    "RunSession",
    "StageModule",
    "TrainResult",
    "build_model",
    "ensure_lora",
    "load_trained_weights",
    "plan_fingerprint",
    "run_stage",
    "save_checkpoint",
    "save_trained_weights",
    "train",
]

log = logging.getLogger("xmm.training")


@dataclass
class TrainResult:
    """What a run produced: the final model folder, the run folder, steps, last losses and skipped samples."""

    output_dir: Path
    model_dir: Path
    global_step: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    bad_samples: dict[str, Any] = field(default_factory=dict)
    model: Any = None


@dataclass
class RunSession:
    """A run in progress: what its stages share, its log, its checkpoint writer and where it is."""

    run: RunContext
    logger: RunLogger
    writer: CheckpointWriter
    state: TrainerState


def train(plan: StagePlan | str | os.PathLike[str] | dict[str, Any], *, resume: bool = False,
          output_dir: str | os.PathLike[str] | None = None, base_dir: str | os.PathLike[str] | None = None,
          threads: int | str | None = None) -> TrainResult:
    """Run every stage of ``plan`` (a :class:`StagePlan`, a YAML path or a dict; ``base_dir`` is where a dict's
    relative paths resolve, default the working directory). ``threads``: torch's compute threads (a number or
    ``auto``), instead of the plan's ``threads`` (see :mod:`xmm.threads`).

    ``resume=True`` continues from ``<output_dir>/checkpoints/latest`` (a fresh start when there is none):
    weights, optimiser, scheduler, RNG and data position are restored, so the result is bit-identical to an
    uninterrupted run. Returns a :class:`TrainResult`; the final model is written to ``<output_dir>/model``.
    """
    plan = load_plan(plan, base_dir=base_dir)
    if output_dir is not None:
        plan.output_dir = str(Path(output_dir).resolve())
    with threads_for(threads if threads is not None else plan.threads), accelerator_session(plan) as accelerator:
        if accelerator.device.type == "cpu":
            tune_cpu_allocator()  # large per-step tensors reuse heap memory instead of page-faulting in each step
        return _run(plan, accelerator, resume=resume)


def _run(plan: StagePlan, accelerator: Any, *, resume: bool) -> TrainResult:
    loaded = find_resume_checkpoint(plan, accelerator) if resume else None
    session = _open_session(plan, accelerator, loaded)
    state = session.state
    start = first_stage(state) if loaded is not None else 0
    # summary.json keeps every stage: those an earlier attempt finished come from the log
    summaries = stage_summaries(session.logger.records, [s.name for s in plan.stages[:start]])
    try:
        for index in range(start, len(plan.stages)):
            inside = loaded is not None and index == state.stage_index and not state.stage_done
            summaries.append(run_stage(session, index, loaded if inside else None))
        bad_total = _finish(session, summaries)
    finally:
        session.run.close()
        session.logger.close()
    out_dir = plan.output_path
    return TrainResult(out_dir, out_dir / MODEL_DIR, state.global_step, summaries, bad_total, session.run.model)


def _open_session(plan: StagePlan, accelerator: Any, loaded: LoadedCheckpoint | None) -> RunSession:
    """The run folder, the model (with what ``loaded`` trained, when resuming), the run state, log and writer."""
    main = accelerator.is_main_process
    out_dir = plan.output_path
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / PLAN_FILE).write_text(plan.to_yaml())
    model = build_model(plan, accelerator.device)
    state, trained = TrainerState(world_size=accelerator.num_processes, plan_fingerprint=plan_fingerprint(plan)), set()
    if loaded is not None:
        state, trained = restore_run(plan, model, loaded, accelerator)
    shard_frozen_llm(model, plan, accelerator)  # distributed.strategy fsdp: the frozen LLM layers, once per run
    bad = BadSamples(plan.on_bad_sample)
    if loaded is not None and main:
        bad.load_state_dict(loaded.state.bad_samples)
    run = RunContext.open(plan, model, accelerator, bad)
    run.trained = trained
    logger = RunLogger(out_dir, enabled=main, report_to=plan.report_to,
                       resume_step=state.global_step if loaded is not None else None,
                       config=plan.model_dump(mode="json"))
    if loaded is not None and main:
        changes = checkpoint_plan_changes(loaded.path, plan, stage_index=state.stage_index, stage_done=state.stage_done)
        logger.restarted(step=state.global_step, checkpoint=loaded.path.name,
                         changes=changes.as_dict() if changes else None)
    writer = CheckpointWriter(out_dir / CHECKPOINTS_DIR, rank=accelerator.process_index, keep=plan.keep_checkpoints,
                              barrier=accelerator.wait_for_everyone)
    return RunSession(run, logger, writer, state)


def run_stage(session: RunSession, index: int, resume_from: LoadedCheckpoint | None) -> dict[str, Any]:
    """Train stage ``index`` to its last step (from ``resume_from`` when it is a checkpoint inside the stage),
    checkpoint it, evaluate it; returns its summary."""
    run, state = session.run, session.state
    with prepare_stage(run, index, resume_from=resume_from) as stage:
        if not stage.resumed:
            state.samples_seen = 0
        state.stage_index, state.stage_name, state.stage_done = index, stage.name, False
        reporter = StageReporter(run, session.logger, stage, state)
        reporter.started()
        try:
            while stage.step < stage.total_steps:
                reporter.step_begins()
                losses = optimizer_step(stage, next_micro_batches(stage, run.bad), run.accelerator)
                stage.step += 1
                state.global_step += 1
                state.samples_seen += stage.samples_per_step
                reporter.step_done(losses)
                if _periodic_checkpoint_due(run.plan, stage):
                    save_checkpoint(session, stage, f"step-{state.global_step:08d}")
            state.stage_done = True
            save_checkpoint(session, stage, _stage_checkpoint(stage))
        finally:
            reporter.close()
    summary: dict[str, Any] = {"stage": stage.name, "steps": stage.step, "examples": len(stage.data.dataset),
                               "last": reporter.last, "trainable_params": stage.selection.num_parameters,
                               "rank_checksums": check_ranks_agree(run.accelerator, stage.selection.params, stage.name)}
    if stage.config.eval is not None:
        summary["eval"] = _evaluate_stage(run, stage, session.writer.root / _stage_checkpoint(stage))
    reporter.ended(summary)
    return summary


def save_checkpoint(session: RunSession, stage: PreparedStage, name: str) -> None:
    """Write checkpoint ``name`` of the run inside ``stage`` (a collective call: every process writes its RNG)."""
    run, state = session.run, session.state
    state.step, state.epoch, state.batch = stage.step, stage.batches.epoch, stage.batches.batch
    state.bad_samples = gather_bad(run.accelerator, run.bad)
    run.cache.flush()  # features computed so far are kept even if the run dies now

    def save_model(folder: Path) -> None:
        with stage.overrides.original_config():
            run.model.save_pretrained(folder)
        save_trained_weights(run.model, run.trained, folder.parent / TRAINED_WEIGHTS)

    with trained_weights_gathered(run.model, run.accelerator, run.trained):
        session.writer.save(name, state=state, save_model=save_model, optimizer=stage.optimizer,
                            scheduler=stage.scheduler, extra_files={PLAN_FILE: run.plan.to_yaml()})


def _periodic_checkpoint_due(plan: StagePlan, stage: PreparedStage) -> bool:
    # the stage's last step is followed by its stage checkpoint anyway
    every = plan.checkpoint_every
    return bool(every) and stage.step % every == 0 and stage.step < stage.total_steps


def _stage_checkpoint(stage: PreparedStage) -> str:
    return f"stage-{stage.index + 1}-{stage.name}"


def _evaluate_stage(run: RunContext, stage: PreparedStage, checkpoint: Path) -> dict[str, Any] | None:
    """The stage's end-of-stage evaluation (main process), also written to its checkpoint's ``model/eval.json``."""
    from xmm.training.evaluate import evaluate

    cfg = stage.config.eval
    assert cfg is not None
    result = None
    with whole_model(run.model, run.accelerator):  # a collective call: rank 0 then evaluates alone
        if run.main:
            with run.cache.evaluation():  # what it encodes is never served to training (see FeatureCache)
                result = evaluate(run.model, run.plan.resolve(cfg.manifest), metric=cfg.metric, limit=cfg.limit,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                                  feature_cache=run.cache if stage.config.feature_cache else None, progress=True)
            write_json(checkpoint / MODEL_DIR / EVAL_FILE, result)
    run.accelerator.wait_for_everyone()
    return result


def _finish(session: RunSession, summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the final model, ``summary.json`` and the loss curve (main process); returns the bad-sample totals."""
    run, state = session.run, session.state
    bad_total = {k: v for k, v in gather_bad(run.accelerator, run.bad).items() if k != "seen"}
    out_dir = run.plan.output_path
    model_dir = out_dir / MODEL_DIR
    distributed = describe_distributed(run.model, run.accelerator, run.plan)
    with trained_weights_gathered(run.model, run.accelerator, run.trained):
        if run.main:
            run.model.save_pretrained(model_dir)
    if run.main:
        (model_dir / PLAN_FILE).write_text(run.plan.to_yaml())
        session.logger.event("summary", step=state.global_step, stages=summaries, bad_samples=bad_total)
        write_json(out_dir / SUMMARY_FILE, {"global_step": state.global_step, "stages": summaries,
                                              "bad_samples": bad_total, "model_dir": str(model_dir),
                                              "restarts": session.logger.restarts(),
                                              "distributed": distributed})
        plot_loss_curve(session.logger.records, out_dir / LOSS_CURVE, title=f"xmm: {out_dir.name}")
        if bad_total["total"]:
            log.warning("skipped %d bad samples: %s", bad_total["total"], bad_total["by_kind"])
    run.accelerator.wait_for_everyone()
    return bad_total


def __getattr__(name: str) -> Any:
    # names that moved out of this module; kept for one release
    if name == "weights_checksum":
        from xmm.persist import tensor_digest

        warnings.warn("xmm.training.loop.weights_checksum is deprecated; use xmm.persist.tensor_digest",
                      DeprecationWarning, stacklevel=2)
        return tensor_digest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
