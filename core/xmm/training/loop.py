"""The staged training loop on Hugging Face ``accelerate``.

``train(plan)`` builds the model, then for each stage: adds LoRA when the stage asks for it, freezes everything its
``trainable`` selectors do not name, reads its manifests, and runs optimiser steps with gradient accumulation,
clipping, bf16 autocast (the model's own), optional gradient checkpointing of the frozen LLM, the feature cache,
logging and checkpoints. Under ``torchrun --nproc_per_node N xmm train PLAN.yaml`` every process runs this same code:
accelerate sets up the process group (gloo on CPU, NCCL on GPUs), wraps the stage in DDP and gives each process its
share of every global batch, so N processes compute what one process computes with the same ``batch_size``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xmm.errors import CheckpointError, ConfigError, TrainingError
from xmm.training.attention import use_training_attention
from xmm.training.cache import CachedFeatureProvider, FeatureCache
from xmm.training.checkpointing import (
    CheckpointWriter,
    LoadedCheckpoint,
    TrainerState,
    latest_checkpoint,
    load_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
)
from xmm.training.data import BadSamples, EpochBatchSampler, ManifestDataset, SafeCollator, record_skipped
from xmm.training.logging import Progress, RunLogger, plot_loss_curve
from xmm.training.memory import tune_cpu_allocator
from xmm.training.objectives import Objective, count_answer_tokens, get_objective, objective_step
from xmm.training.optim import build_optimizer, build_scheduler, param_groups
from xmm.training.plan import StageConfig, StagePlan, load_plan
from xmm.training.selection import (
    apply_selection,
    disable_layer_checkpointing,
    enable_layer_checkpointing,
    install_mode_guard,
    remove_mode_guard,
    select,
)

log = logging.getLogger("xmm.training")

TRAINED_WEIGHTS = "trained.safetensors"


@dataclass
class TrainResult:
    """What a run produced: the final model folder, the run folder, steps, last losses and skipped samples."""

    output_dir: Path
    model_dir: Path
    global_step: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    bad_samples: dict[str, Any] = field(default_factory=dict)
    model: Any = None


class StageModule(nn.Module):
    """One stage's forward: the model (when an objective needs it) and the weighted objectives -> total loss.

    This is the module DDP wraps, so every objective - also those that bypass the LLM, like the Q-Former's stage-1
    losses - runs inside the wrapped forward and its gradients are all-reduced.
    """

    def __init__(self, model: nn.Module, objectives: list[tuple[Objective, float, dict[str, Any]]], stage: str) -> None:
        super().__init__()
        self.model = model
        self.objectives = objectives
        self.stage = stage
        self.needs_output = any(o.needs_output for o, _, _ in objectives)
        self.needs_hidden = any(o.needs_hidden_states for o, _, _ in objectives)

    def forward(self, batch: Any, token_scale: float = 1.0, micro_scale: float = 1.0) -> dict[str, torch.Tensor]:
        """``loss``: the weighted objectives of ``batch`` scaled for accumulation (token-mean objectives by
        ``token_scale``, the others by ``micro_scale``); ``loss/<name>``: each objective's plain value."""
        model = self.model
        if batch is None:
            # every example of this process's share was unusable: contribute zero gradients so that the other
            # processes' all-reduce still completes
            zero = sum((p.sum() * 0.0 for p in model.parameters() if p.requires_grad), torch.zeros(()))
            return {"loss": zero}
        with model.autocast():
            output = None
            if self.needs_output:
                output = model(batch, output_hidden_states=self.needs_hidden, logits="labels")
            parts: dict[str, torch.Tensor] = {}
            with objective_step() as memo:
                memo["stage_objectives"] = [o.name for o, _, _ in self.objectives]
                for obj, weight, params in self.objectives:
                    value = obj(model, batch, output, **params)
                    if value is not None:
                        scale = token_scale if obj.token_mean else micro_scale
                        parts[obj.name] = (value, weight * scale)  # type: ignore[assignment]
        if not parts:
            names = ", ".join(o.name for o, _, _ in self.objectives)
            raise TrainingError(
                f"stage '{self.stage}': none of its objectives ({names}) applies to this batch - e.g. Q-Former losses "
                "need a qformer bridge with text_branch: true, cif_quantity a CIF bridge, lm answer tokens"
            )
        total = sum(w * v.float() for v, w in parts.values())  # type: ignore[misc]
        out = {"loss": total}
        out.update({f"loss/{k}": v.detach().float() for k, (v, _) in parts.items()})  # type: ignore[misc]
        return out


# -- helpers ----------------------------------------------------------------------------------------------------
def _accelerator() -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import DistributedDataParallelKwargs

    # the global batch is split across processes (same math on 1 or N processes); stages that leave a bridge unused
    # in a step (a modality absent from a batch) need find_unused_parameters; buffers of frozen modules never change.
    # Under torchrun without GPUs accelerate only sets up its gloo process group when told to run on the CPU.
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        cpu=launched and not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True, broadcast_buffers=False)],
    )


def _end_distributed(accelerator: Any) -> None:
    """Tear the process group down; a group left alive aborts the process at exit."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    try:  # a later run in the same process must not inherit a dead group
        from accelerate.state import AcceleratorState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
    except Exception:  # noqa: BLE001 - older accelerate keeps no such state
        pass


def plan_fingerprint(plan: StagePlan) -> str:
    import hashlib

    return hashlib.sha256(plan.to_yaml().encode()).hexdigest()[:16]


def build_model(plan: StagePlan, device: torch.device | None = None) -> Any:
    """The plan's model, built deterministically from ``plan.seed`` (frozen random parts are the same every time)."""
    from xmm.model import MultimodalLM

    cfg = plan.multimodal_config()
    seed_everything(plan.seed)
    if device is None or cfg.device is not None:
        return MultimodalLM.from_config(cfg)
    # this process's device (cuda:<local rank> under torchrun), not written into the checkpoint's config
    model = MultimodalLM.from_config(cfg.model_copy(update={"device": str(device)}))
    model.config = model.config.model_copy(update={"device": None})
    return model


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


def save_trained_weights(model: nn.Module, names: set[str], path: Path) -> None:
    """Every parameter trained so far, by model-level name (what resume restores, bit for bit)."""
    from safetensors.torch import save_file

    from xmm.io import atomic_write

    params = dict(model.named_parameters())
    state = {n: params[n].detach().cpu().contiguous().clone() for n in sorted(names) if n in params}
    atomic_write(path, lambda p: save_file(state, str(p)))


def load_trained_weights(model: nn.Module, path: Path) -> set[str]:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors' own error types
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise CheckpointError(f"{path}: the model has no parameters {missing[:5]}; was the plan's model changed?")
    with torch.no_grad():
        for n, v in state.items():
            if params[n].shape != v.shape:
                raise CheckpointError(f"{path}: '{n}' has shape {tuple(v.shape)}, the model's is {tuple(params[n].shape)}")
            params[n].copy_(v)
    return set(state)


class _Batches:
    """Endless micro-batch stream over epochs with an exact position (epoch, batch within the epoch)."""

    def __init__(self, loader: Any, sampler: EpochBatchSampler, epoch: int, batch: int) -> None:
        self.loader = loader
        self.sampler = sampler
        self.epoch = epoch
        self.batch = batch
        self._it: Iterator[Any] | None = None

    def next(self) -> Any:
        while True:
            if self._it is None:
                if self.batch >= len(self.sampler):
                    self.epoch, self.batch = self.epoch + 1, 0
                self.sampler.set_position(self.epoch, self.batch)
                self._it = iter(self.loader)
            try:
                item = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch, self.batch = self.epoch + 1, 0
                continue
            self.batch += 1
            return item


def _sum_over_processes(accelerator: Any, value: int) -> int:
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([value], dtype=torch.long, device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def _reduce_mean(accelerator: Any, values: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=accelerator.device)
    t = accelerator.reduce(t, reduction="mean")
    return dict(zip(keys, t.tolist()))


def _gather_bad(accelerator: Any, bad: BadSamples) -> dict[str, Any]:
    """Bad-sample state over all processes (each collates its own share), each distinct sample counted once.
    A collective call: every process must make it."""
    if accelerator.num_processes == 1:
        return bad.state_dict()
    parts: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(parts, bad.state_dict())
    return BadSamples.merged(parts, keep=bad.keep)


def weights_checksum(params: list[nn.Parameter]) -> str:
    """sha256 over the exact bytes of ``params`` (to check that processes hold identical weights)."""
    import hashlib

    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _check_ranks_agree(accelerator: Any, params: list[nn.Parameter], stage: str) -> list[str]:
    """Checksums of the trained weights of every process; raise if DDP let them drift apart."""
    mine = weights_checksum(params)
    if accelerator.num_processes == 1:
        return [mine]
    sums: list[Any] = [None] * accelerator.num_processes
    torch.distributed.all_gather_object(sums, mine)
    if len(set(sums)) != 1:
        raise TrainingError(f"stage '{stage}': the processes ended with different weights {sums}")
    return sums


def _public(bad_state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in bad_state.items() if k != "seen"}


# -- the run ------------------------------------------------------------------------------------------------------
def train(plan: StagePlan | str | os.PathLike[str] | dict[str, Any], *, resume: bool = False,
          output_dir: str | os.PathLike[str] | None = None, base_dir: str | os.PathLike[str] | None = None) -> TrainResult:
    """Run every stage of ``plan`` (a :class:`StagePlan`, a YAML path or a dict; ``base_dir`` is where a dict's
    relative paths resolve, default the working directory).

    ``resume=True`` continues from ``<output_dir>/checkpoints/latest`` (a fresh start when there is none):
    weights, optimiser, scheduler, RNG and data position are restored, so the result is bit-identical to an
    uninterrupted run. Returns a :class:`TrainResult`; the final model is written to ``<output_dir>/model``.
    """
    plan = load_plan(plan, base_dir=base_dir)
    if output_dir is not None:
        plan.output_dir = str(Path(output_dir).resolve())
    accelerator = _accelerator()
    if accelerator.device.type == "cpu":
        tune_cpu_allocator()  # large per-step tensors reuse heap memory instead of page-faulting in each step
    try:
        return _run(plan, accelerator, resume=resume)
    finally:
        _end_distributed(accelerator)


def _run(plan: StagePlan, accelerator: Any, *, resume: bool) -> TrainResult:
    main = accelerator.is_main_process
    out_dir = plan.output_path
    ckpt_root = out_dir / "checkpoints"
    loaded: LoadedCheckpoint | None = None
    if resume:
        path = latest_checkpoint(ckpt_root)
        if path is not None:
            loaded = load_checkpoint(path)
            if loaded.state.plan_fingerprint and loaded.state.plan_fingerprint != plan_fingerprint(plan):
                log.warning("resuming %s with a plan that differs from the one it was started with", path)
            if loaded.state.world_size != accelerator.num_processes:
                log.warning("resuming a run of %d processes with %d; batches are the same, the split differs",
                            loaded.state.world_size, accelerator.num_processes)
        elif main:
            log.warning("--resume: no checkpoint in %s yet; starting from the beginning", ckpt_root)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "plan.yaml").write_text(plan.to_yaml())
    model = build_model(plan, accelerator.device)
    start_stage = 0
    trained: set[str] = set()
    state = TrainerState(world_size=accelerator.num_processes, plan_fingerprint=plan_fingerprint(plan))
    if loaded is not None:
        state = loaded.state
        state.world_size = accelerator.num_processes
        start_stage = state.stage_index + (1 if state.stage_done else 0)
        for i in range(state.stage_index + 1):
            ensure_lora(model, plan.stages[i], i)  # the structure the checkpoint was saved with
        trained = load_trained_weights(model, loaded.path / TRAINED_WEIGHTS)
        if state.stage_done:
            # the next stage starts from the RNG the uninterrupted run had here (its LoRA init draws from it)
            rng = loaded.rng_state(accelerator.process_index)
            if rng is None:
                raise CheckpointError(f"{loaded.path}: no RNG state for process {accelerator.process_index}")
            set_rng_state(rng)
    bad = BadSamples(plan.on_bad_sample)
    if loaded is not None and main:
        bad.load_state_dict(loaded.state.bad_samples)
    cache = FeatureCache(plan.cache_path, writer=f"rank{accelerator.process_index}-{os.getpid()}-{time.time_ns() % 10**8}")
    provider = CachedFeatureProvider(model, cache, compute=model.encode_media)
    logger = RunLogger(out_dir, enabled=main, report_to=plan.report_to,
                       resume_step=state.global_step if loaded is not None else None,
                       config=plan.model_dump(mode="json"))
    writer = CheckpointWriter(ckpt_root, rank=accelerator.process_index, keep=plan.keep_checkpoints,
                              barrier=accelerator.wait_for_everyone)
    summaries: list[dict[str, Any]] = []
    try:
        for si in range(start_stage, len(plan.stages)):
            resume_here = loaded is not None and si == state.stage_index and not state.stage_done
            summary = _run_stage(plan, si, model, accelerator, provider, cache, bad, logger, writer, state, trained,
                                 loaded if resume_here else None)
            summaries.append(summary)
        bad_total = _public(_gather_bad(accelerator, bad))
        model_dir = out_dir / "model"
        if main:
            model.save_pretrained(model_dir)
            (model_dir / "plan.yaml").write_text(plan.to_yaml())
            logger.event("summary", step=state.global_step, stages=summaries, bad_samples=bad_total)
            write_json(out_dir / "summary.json", {"global_step": state.global_step, "stages": summaries,
                                                  "bad_samples": bad_total, "model_dir": str(model_dir)})
            plot_loss_curve(logger.records, out_dir / "loss_curve.png", title=f"xmm: {out_dir.name}")
            if bad_total["total"]:
                log.warning("skipped %d bad samples: %s", bad_total["total"], bad_total["by_kind"])
        accelerator.wait_for_everyone()
    finally:
        cache.close()
        logger.close()
        model.feature_provider = None
    return TrainResult(out_dir, out_dir / "model", state.global_step, summaries, bad_total, model)


def _objectives(stage: StageConfig) -> list[tuple[Objective, float, dict[str, Any]]]:
    return [(get_objective(o.name), o.weight, dict(o.params)) for o in stage.objectives if o.weight > 0]


def _run_stage(plan: StagePlan, si: int, model: Any, accelerator: Any, provider: CachedFeatureProvider,
               cache: FeatureCache, bad: BadSamples, logger: RunLogger, writer: CheckpointWriter, state: TrainerState,
               trained: set[str], loaded: LoadedCheckpoint | None) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    stage = plan.stages[si]
    main = accelerator.is_main_process
    src = plan.source
    ensure_lora(model, stage, si)
    selection = select(model, stage.trainable, field_prefix=f"stages.{si}.trainable", source=src)
    if not selection.params:
        raise ConfigError(f"stage '{stage.name}' selects no parameters to train", field=f"stages.{si}.trainable", source=src)
    apply_selection(model, selection)
    trained.update(selection.names)

    # data
    # every process reads the whole manifest; the main one counts its bad lines (once per line, also on resume)
    manifest_bad = bad if main else BadSamples(plan.on_bad_sample)
    dataset = ManifestDataset.from_manifests([plan.resolve(p) for p in stage.data.train], model.specs, manifest_bad,
                                             max_examples=stage.data.max_examples)
    n_proc = accelerator.num_processes
    if stage.batch_size % n_proc:
        raise ConfigError(f"batch_size {stage.batch_size} is the global batch and must be a multiple of the "
                          f"{n_proc} processes", field=f"stages.{si}.batch_size", source=src)
    if len(dataset) < stage.batch_size and stage.data.drop_last:
        raise TrainingError(f"stage '{stage.name}': {len(dataset)} usable examples, fewer than batch_size "
                            f"{stage.batch_size} (skipped: {manifest_bad.as_dict()['by_kind']})")
    sampler = EpochBatchSampler(len(dataset), stage.batch_size, seed=plan.seed + 7919 * si, shuffle=stage.data.shuffle,
                                drop_last=stage.data.drop_last)
    use_cache = stage.feature_cache
    collator = model.collator(padding_side="right", load_media=not use_cache)
    safe = SafeCollator(collator, plan.on_bad_sample, needs_decode=(lambda it: not provider.is_hit(it)) if use_cache else None)
    # the loader's own generator: each iter() draws a worker base seed, which must not come from the global RNG
    # (a resumed run starts one more iterator than the uninterrupted one and would see other dropout masks)
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_sampler=sampler, collate_fn=safe, num_workers=stage.data.num_workers,
                   generator=torch.Generator().manual_seed(plan.seed + si))
    )
    batches_per_epoch = len(sampler)
    total_steps = stage.max_steps or max(1, math.floor(stage.epochs * batches_per_epoch / stage.grad_accum))

    # optimisation
    groups = param_groups(model, selection, stage.optimizer, field_prefix=f"stages.{si}.optimizer", source=src)
    optimizer = build_optimizer(groups, stage.optimizer)
    scheduler = build_scheduler(optimizer, total_steps, stage.schedule)
    objectives = _objectives(stage)
    module = accelerator.prepare_model(StageModule(model, objectives, stage.name))
    params = list(selection.params.values())

    if loaded is not None:
        opt_state, sched_state = loaded.optimizer_state(), loaded.scheduler_state()
        if opt_state is None or sched_state is None:
            raise CheckpointError(f"{loaded.path}: optimizer/scheduler state missing")
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(sched_state)
        rng = loaded.rng_state(accelerator.process_index)
        if rng is None:
            raise CheckpointError(f"{loaded.path}: no RNG state for process {accelerator.process_index}")
        set_rng_state(rng)
        step, epoch, batch_pos = loaded.state.step, loaded.state.epoch, loaded.state.batch
    else:
        step, epoch, batch_pos = 0, 0, 0
        state.samples_seen = 0
        # the stage's randomness (dropout, ITM negatives) is a function of the seed and the stage alone
        seed_everything(plan.seed + 104729 * (si + 1) + accelerator.process_index)
    state.stage_index, state.stage_name, state.stage_done = si, stage.name, False
    stream = _Batches(loader, sampler, epoch, batch_pos)

    saved_autocast = model.config.autocast
    if stage.mixed_precision != "auto":
        model.config = model.config.model_copy(update={"autocast": "bf16" if stage.mixed_precision == "bf16" else "off"})
    model.feature_provider = provider if use_cache else None
    provider.reset()  # this stage's trainable encoders bypass the cache
    if use_cache:
        cache.refresh()
    if stage.gradient_checkpointing:
        enable_layer_checkpointing(model.llm)
    restore_attention = use_training_attention(model.llm)
    install_mode_guard(model)
    module.train()

    def save(name: str) -> None:
        state.step, state.epoch, state.batch = step, stream.epoch, stream.batch
        state.bad_samples = _gather_bad(accelerator, bad)
        cache.flush()  # features computed so far are kept even if the run dies now

        def save_model(d: Path) -> None:
            cur = model.config
            model.config = cur.model_copy(update={"autocast": saved_autocast})
            try:
                model.save_pretrained(d)
            finally:
                model.config = cur
            save_trained_weights(model, trained, d.parent / TRAINED_WEIGHTS)

        writer.save(name, state=state, save_model=save_model, optimizer=optimizer, scheduler=scheduler,
                    extra_files={"plan.yaml": plan.to_yaml()})

    if main:
        logger.event("stage_start", step=state.global_step, stage=stage.name, index=si, total_steps=total_steps,
                     examples=len(dataset), trainable=selection.names[:50], trainable_params=selection.num_parameters,
                     resumed_at=step if loaded is not None else None)
        log.info("stage %d/%d '%s': %d steps, %d trainable parameters, %d examples", si + 1, len(plan.stages),
                 stage.name, total_steps, selection.num_parameters, len(dataset))
    bar = Progress(total_steps, initial=step, desc=stage.name, enabled=main)
    last: dict[str, float] = {}
    window_t, window_samples = time.perf_counter(), 0
    try:
        while step < total_steps:
            t0, c0 = time.perf_counter(), time.process_time()
            sums: dict[str, float] = {}
            micro_batches = [record_skipped(stream.next(), bad) for _ in range(stage.grad_accum)]
            tokens = [count_answer_tokens(b) for b in micro_batches]
            step_tokens = max(_sum_over_processes(accelerator, sum(tokens)), 1)
            for micro, batch in enumerate(micro_batches):
                sync = micro == stage.grad_accum - 1
                ctx = accelerator.no_sync(module) if not sync and n_proc > 1 else nullcontext()
                with ctx:
                    # DDP averages gradients over processes, hence the factor n_proc in the token weight
                    out = module(batch, token_scale=tokens[micro] * n_proc / step_tokens, micro_scale=1.0 / stage.grad_accum)
                    accelerator.backward(out["loss"])
                for k, v in out.items():
                    if k != "loss":
                        sums[k] = sums.get(k, 0.0) + float(v) / stage.grad_accum
            sums["loss"] = sum(w * sums.get(f"loss/{o.name}", 0.0) for o, w, _ in objectives)
            if stage.max_grad_norm is not None:
                gnorm = torch.nn.utils.clip_grad_norm_(params, stage.max_grad_norm)
                sums["grad_norm"] = float(gnorm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state.global_step += 1
            state.samples_seen += stage.batch_size * stage.grad_accum
            window_samples += stage.batch_size * stage.grad_accum
            if step % plan.log_every == 0 or step == total_steps:
                vals = _reduce_mean(accelerator, sums)
                now = time.perf_counter()
                rate = window_samples / max(now - window_t, 1e-9)
                window_t, window_samples = now, 0
                record = {"step": state.global_step, "stage": stage.name, "stage_step": step, "epoch": stream.epoch,
                          **{k: round(v, 6) for k, v in vals.items()},
                          "lr": optimizer.param_groups[0]["lr"], "samples_per_s": round(rate, 3),
                          "step_time_s": round(now - t0, 4), "step_cpu_s": round(time.process_time() - c0, 4),
                          "skipped": bad.total}
                logger.log(record)
                last = vals
                bar.update(plan.log_every if step % plan.log_every == 0 else step % plan.log_every,
                           loss=vals.get("loss", float("nan")), samples_s=rate)
            if plan.checkpoint_every and step % plan.checkpoint_every == 0 and step < total_steps:
                save(f"step-{state.global_step:08d}")
        state.stage_done = True
        save(f"stage-{si + 1}-{stage.name}")
    finally:
        bar.close()
        restore_attention()
        remove_mode_guard(model)
        if stage.gradient_checkpointing:
            disable_layer_checkpointing(model.llm)
        model.config = model.config.model_copy(update={"autocast": saved_autocast})
        model.eval()
    summary: dict[str, Any] = {"stage": stage.name, "steps": step, "examples": len(dataset), "last": last,
                               "trainable_params": selection.num_parameters,
                               "rank_checksums": _check_ranks_agree(accelerator, params, stage.name)}
    if stage.eval is not None:
        summary["eval"] = _stage_eval(plan, si, model, accelerator, writer.root / f"stage-{si + 1}-{stage.name}")
    if main:
        logger.event("stage_end", step=state.global_step, stage=stage.name, **{k: v for k, v in summary.items() if k != "stage"})
    return summary


def _stage_eval(plan: StagePlan, si: int, model: Any, accelerator: Any, ckpt: Path) -> dict[str, Any] | None:
    from xmm.training.evaluate import evaluate

    cfg = plan.stages[si].eval
    assert cfg is not None
    result = None
    if accelerator.is_main_process:
        result = evaluate(model, plan.resolve(cfg.manifest), metric=cfg.metric, limit=cfg.limit,
                          max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)
        write_json(ckpt / "model" / "eval.json", result)
    accelerator.wait_for_everyone()
    return result
