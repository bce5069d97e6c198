"""A stage's data: its datasets indexed (records are read when reached), a deterministic batch order, and an endless
micro-batch stream that knows its exact position (so a checkpoint can say where to continue)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from xmm.errors import ConfigError, TrainingError
from xmm.threads import available_cores
from xmm.training.context import RunContext
from xmm.training.data import BucketBatchSampler, EpochBatchSampler, stage_dataset
from xmm.training.plan import StageConfig
from xmm.training.prepared import PreparedCollator, PreparedExamples


@dataclass
class StageData:
    """The stage's records, their batch order, the collator and the (accelerate-prepared) loader."""

    dataset: PreparedExamples
    sampler: EpochBatchSampler
    collate: PreparedCollator
    loader: Any

    @property
    def batches_per_epoch(self) -> int:
        return len(self.sampler)


def build_stage_data(run: RunContext, index: int, stage: StageConfig | None = None) -> StageData:
    """Open stage ``index``'s datasets and build its loader (``stage``: the stage's config with its batch size
    resolved, default the plan's). Raises :class:`ConfigError` when the global batch does not split over the
    processes, :class:`TrainingError` when there are fewer records than one batch. Bad records are skipped and counted
    (by the process whose batch holds them, once per record) when a batch reaches them.

    Records are prepared once (:mod:`xmm.training.prepared`) and batches assembled in ``data.num_workers`` worker
    processes (``auto``: :func:`loader_workers`) that stay up for the stage, ``data.prefetch`` batches ahead each,
    into page-locked memory when the model is on a CUDA device.
    """
    from torch.utils.data import DataLoader

    plan, model, accelerator = run.plan, run.model, run.accelerator
    stage = stage or plan.stages[index]
    # stages that read the same data share its prepared records (the demo's convert, align and integrate stages)
    key = json.dumps([[e if isinstance(e, str) else e.model_dump(mode="json") for e in stage.data.train],
                      stage.data.max_examples], sort_keys=True, default=str)
    dataset = run.prepared.get(key)
    records = dataset.dataset if dataset is not None else stage_dataset(
        stage.data.train, model.specs, plan.resolve("."), max_examples=stage.data.max_examples, source=plan.source)
    n_proc = accelerator.num_processes
    if stage.batch_size % n_proc:
        raise ConfigError(f"batch_size {stage.batch_size} is the global batch and must be a multiple of the "
                          f"{n_proc} processes", field=f"stages.{index}.batch_size", source=plan.source)
    if len(records) < stage.batch_size and stage.data.drop_last:
        raise TrainingError(f"stage '{stage.name}': {len(records)} records, fewer than batch_size {stage.batch_size}")
    collator = model.collator(padding_side="right", load_media=False)
    if dataset is None:
        dataset = run.prepared[key] = PreparedExamples(records, collator)
    seed = plan.seed + 7919 * index
    if stage.data.buckets:
        sampler: EpochBatchSampler = BucketBatchSampler(
            len(dataset), stage.batch_size, seed=seed, length=dataset.positions, window=stage.data.buckets,
            shuffle=stage.data.shuffle, drop_last=stage.data.drop_last)
    else:
        sampler = EpochBatchSampler(len(dataset), stage.batch_size, seed=seed, shuffle=stage.data.shuffle,
                                    drop_last=stage.data.drop_last)
    collate = PreparedCollator(collator, dict(model.encoders.items()),
                               provider=run.provider if stage.feature_cache else None,
                               on_bad_sample=plan.on_bad_sample)
    device = torch.device(accelerator.device)
    workers = loader_workers(stage.data.num_workers, device)
    extra: dict[str, Any] = {}
    if workers:
        extra = {"persistent_workers": True, "prefetch_factor": stage.data.prefetch}
    # the loader's own generator: each iter() draws a worker base seed, which must not come from the global RNG
    # (a resumed run starts one more iterator than the uninterrupted one and would see other dropout masks)
    loader = accelerator.prepare_data_loader(
        DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                   pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(plan.seed + index),
                   **extra)
    )
    return StageData(dataset, sampler, collate, loader)


def loader_workers(setting: int | str, device: torch.device) -> int:
    """Worker processes of a stage's loader: ``setting`` when it is a number; for ``auto``, on an accelerator up to 8
    (one core kept for the training process), on the CPU the cores its compute threads leave free (at most 2), so
    that workers never take cycles from the step."""
    if isinstance(setting, int):
        return setting
    cores = available_cores()
    if device.type != "cpu":
        return max(0, min(8, cores - 1))
    return max(0, min(2, cores - torch.get_num_threads()))


class Batches:
    """Endless micro-batch stream over epochs with an exact position (epoch, batch within the epoch)."""

    def __init__(self, loader: Any, sampler: EpochBatchSampler, epoch: int = 0, batch: int = 0) -> None:
        self.loader = loader
        self.sampler = sampler
        self.epoch = epoch
        self.batch = batch
        self._it: Iterator[Any] | None = None
        self.wait_s = 0.0  # seconds spent waiting for batches (the training step's data wait)

    def next(self) -> Any:
        """The next micro-batch (this process's share of the global batch), starting a new epoch when one ends."""
        start = time.perf_counter()
        try:
            return self._next()
        finally:
            self.wait_s += time.perf_counter() - start

    def _next(self) -> Any:
        while True:
            if self._it is None:
                if self.batch >= len(self.sampler):
                    self.epoch, self.batch = self.epoch + 1, 0
                self.sampler.set_position(self.epoch, self.batch)
                self._it = iter(self.loader)
            try:
                item = next(self._it)
            except TrainingError as e:
                raise TrainingError(worker_message(str(e))) from None
            except StopIteration:
                self._it = None
                self.epoch, self.batch = self.epoch + 1, 0
                continue
            self.batch += 1
            return item

    def close(self) -> None:
        """Stop the loader's worker processes (they stay up between the epochs of a stage)."""
        it, self._it = self._it, None
        if hasattr(it, "close"):
            it.close()  # accelerate's loader iterates through a generator
        base = getattr(self.loader, "base_dataloader", self.loader)
        inner = vars(base).get("_iterator")  # what a loader with persistent workers keeps between epochs
        if inner is not None and hasattr(inner, "_shutdown_workers"):
            inner._shutdown_workers()
            base._iterator = None


def worker_message(message: str) -> str:
    """The message of an error raised in a data loader worker, without the worker's traceback that torch puts
    before it."""
    if not message.startswith("Caught "):
        return message
    last = message.rstrip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last
