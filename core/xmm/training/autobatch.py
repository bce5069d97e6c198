"""``batch_size: auto``: the largest micro-batch that fits the device, with the global batch kept by accumulation.

:func:`fit_micro_batch` runs trial forward+backward passes of the stage (its objectives, under its autocast and
feature cache, no optimiser step, the RNG state restored afterwards) on its first records:

- on CUDA, doubling micro-batches until one runs out of memory or its peak passes the budget (default: 90 % of the
  device's memory);
- elsewhere (CPU, MPS), at two small sizes, counting the bytes of every tensor the step allocates
  (:class:`PeakBytes`), and the largest batch whose straight-line extrapolation stays within the budget (the plan's
  ``memory_budget_gb``, default half of the memory available now).

:func:`resolve_batch` turns the fit into the stage's ``batch_size`` (over all processes) and ``grad_accum``: with
``global_batch_size`` the micro-batch is the largest divisor of it that fits, so an optimiser step still sees exactly
that many examples. The choice is written to the run folder (:data:`~xmm.training.layout.BATCH_SIZES`) so that a
resumed stage continues with the same micro-batches.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from xmm.errors import TrainingError
from xmm.training.plan import StageConfig

log = logging.getLogger(__name__)

BATCH_SIZES = "batch_sizes.json"
# the most a search tries (a micro-batch beyond this gains nothing on any device of today)
MAX_AUTO_BATCH = 8192


class PeakBytes(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the block (what already existed is not counted), on any
    device: every op's outputs are counted until their last tensor is freed."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[tuple[str, int], list[int]] = {}  # storage -> [tensors alive, bytes]
        self.current = 0
        self.peak = 0

    def _release(self, key: tuple[str, int]) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self._live[key]
            self.current -= entry[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            entry = self._live.get(key)
            if entry is None:
                self._live[key] = [1, storage.nbytes()]
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
            else:
                entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


def default_budget(device: torch.device) -> int:
    """Bytes a micro-batch's step may use: 90 % of a CUDA device, MPS's recommended working set less what is
    allocated, else half of the memory available now."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return info.get("MemAvailable", info.get("MemFree", 0)) // 2
    except OSError:
        return 4 << 30


def fit_micro_batch(step: Callable[[int], None], device: torch.device, budget: int, cap: int) -> int:
    """The largest micro-batch (at most ``cap``) whose step fits ``budget`` bytes; ``step(b)`` runs one trial
    forward+backward at micro-batch ``b``."""
    if device.type == "cuda":
        return _fit_cuda(step, device, budget, cap)
    # measure two small batches, extrapolate along the line through the last two measurements, measure there and
    # correct (a step's fixed part - gradients of the trained weights - dominates small batches)
    points: list[tuple[int, int]] = []
    for b in dict.fromkeys([min(2, cap), min(4, cap)]):
        points.append((b, _measure(step, b)))
    fits = [b for b, p in points if p <= budget]
    if not fits:
        raise TrainingError(f"batch_size auto: {points[0][0]} example(s) need {points[0][1] / 2**20:.1f} MiB, more "
                            f"than the budget of {budget / 2**20:.1f} MiB (memory_budget_gb)")
    for _ in range(4):
        if len(points) < 2 or max(fits) == cap:
            break
        (b1, p1), (b2, p2) = sorted(points[-2:])
        per_sample = max((p2 - p1) / max(b2 - b1, 1), 1.0)
        guess = max(1, min(cap, int(b2 + (budget - p2) // per_sample)))
        if guess in (b for b, _ in points):
            break
        points.append((guess, _measure(step, guess)))
        if points[-1][1] <= budget:
            fits.append(guess)
    return _round(max(fits))


def _measure(step: Callable[[int], None], b: int) -> int:
    with PeakBytes() as meter:
        step(b)
    return meter.peak


def _fit_cuda(step: Callable[[int], None], device: torch.device, budget: int, cap: int) -> int:
    best, b = 0, 1
    while b <= cap:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        try:
            step(b)
            peak = torch.cuda.max_memory_allocated(device)
        except torch.cuda.OutOfMemoryError:
            break
        if peak > budget:
            break
        best = b
        if b == cap:
            break
        b = min(b * 2, cap)
    torch.cuda.empty_cache()
    if best == 0:
        raise TrainingError("batch_size auto: a micro-batch of one example does not fit on the device")
    return best


def _round(n: int) -> int:
    # shapes from a small set: multiples of 8 once that costs little
    return n - n % 8 if n >= 16 else n


def split_global(global_batch: int, fit: int) -> tuple[int, int]:
    """``(micro, accum)`` with ``micro * accum == global_batch`` and the largest ``micro <= fit``."""
    for accum in range(1, global_batch + 1):
        if global_batch % accum == 0 and global_batch // accum <= fit:
            return global_batch // accum, accum
    return 1, global_batch


def resolve_batch(stage: StageConfig, n_proc: int, fit_per_process: int) -> StageConfig:
    """``stage`` with its ``batch_size`` (over ``n_proc`` processes) and ``grad_accum`` from the per-process fit."""
    if stage.global_batch_size is not None:
        per_process, accum = split_global(stage.global_batch_size // n_proc, fit_per_process)
        return stage.model_copy(update={"batch_size": per_process * n_proc, "grad_accum": accum})
    return stage.model_copy(update={"batch_size": fit_per_process * n_proc})


def read_choices(path: Any) -> dict[str, dict[str, int]]:
    """The batch sizes an earlier attempt of the run chose, by stage name."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_choice(path: Any, stage: StageConfig) -> None:
    """Record ``stage``'s resolved ``batch_size`` / ``grad_accum`` in the run folder's :data:`BATCH_SIZES`."""
    from xmm.io import atomic_write_text

    choices = read_choices(path)
    choices[stage.name] = {"batch_size": int(stage.batch_size), "grad_accum": stage.grad_accum}
    atomic_write_text(path, json.dumps(choices, indent=1) + "\n")


def auto_batch_stage(run: Any, index: int, stage: StageConfig, *, resuming: bool) -> StageConfig:
    """Stage ``index``'s config with ``batch_size: auto`` resolved (see the module docstring); a stage resumed
    inside keeps what its first attempt chose."""
    plan, accelerator = run.plan, run.accelerator
    record = plan.output_path / BATCH_SIZES
    chosen = read_choices(record).get(stage.name)
    if resuming and chosen is not None:
        return stage.model_copy(update=chosen)
    n_proc = accelerator.num_processes
    device = torch.device(accelerator.device)
    budget = int(stage.memory_budget_gb * 2**30) if stage.memory_budget_gb is not None else default_budget(device)
    step, n_records = _trial_step(run, index, stage)
    cap = stage.global_batch_size // n_proc if stage.global_batch_size is not None else min(MAX_AUTO_BATCH,
                                                                                          n_records // n_proc)
    fit = fit_micro_batch(step, device, budget, max(1, cap))
    if n_proc > 1:  # every process takes the smallest fit (the processes' micro-batches must agree)
        fit = _min_over_processes(accelerator, fit)
    resolved = resolve_batch(stage, n_proc, fit)
    log.info("stage '%s': batch_size auto -> %d (x%d accumulation), budget %.1f GiB", stage.name,
             resolved.batch_size, resolved.grad_accum, budget / 2**30)
    if run.main:
        write_choice(record, resolved)
    return resolved


def _min_over_processes(accelerator: Any, value: int) -> int:
    t = torch.tensor([value], dtype=torch.long, device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return int(t.item())


def _trial_step(run: Any, index: int, stage: StageConfig) -> tuple[Callable[[int], None], int]:
    """``step(b)``: one forward+backward of the stage on ``b`` of its longest records (no optimiser step; gradients,
    buffers and RNG as before); and the number of records."""
    from xmm.training.data import SkippedBatch, stage_dataset
    from xmm.training.overrides import StageOverrides
    from xmm.training.prepared import PreparedCollator, PreparedExample, PreparedExamples
    from xmm.training.step import StageModule, stage_objectives

    plan, model = run.plan, run.model
    records = stage_dataset(stage.data.train, model.specs, plan.resolve("."), max_examples=stage.data.max_examples,
                            source=plan.source)
    collator = model.collator(padding_side="right", load_media=False)
    prepared = PreparedExamples(records, collator)
    collate = PreparedCollator(collator, dict(model.encoders.items()),
                               provider=run.provider if stage.feature_cache else None, on_bad_sample="skip")
    # the longest records first: the widest batches the stage will see
    sample = [i for i in range(min(len(prepared), 512)) if isinstance(prepared[i], PreparedExample)]
    if not sample:
        raise TrainingError(f"stage '{stage.name}': no usable record among its first {min(len(prepared), 512)} "
                            "to size batch_size auto with")
    sample.sort(key=prepared.length, reverse=True)
    module = StageModule(model, stage_objectives(stage), stage.name)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(b: int) -> None:
        batch = collate([prepared[sample[i % len(sample)]] for i in range(b)])
        if isinstance(batch, SkippedBatch):
            raise TrainingError(f"stage '{stage.name}': the records to size batch_size auto with are unusable")
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        devices = [torch.device(run.accelerator.device)] if torch.device(run.accelerator.device).type == "cuda" else []
        overrides = StageOverrides(model, module, mixed_precision=stage.mixed_precision,
                                   feature_provider=run.provider if stage.feature_cache else None,
                                   gradient_checkpointing=stage.gradient_checkpointing)
        try:
            with torch.random.fork_rng(devices=devices), overrides:
                module(batch)["loss"].backward()
        finally:
            for p in params:
                p.grad = None
            with torch.no_grad():
                for k, v in model.named_buffers():
                    v.copy_(buffers[k])

    return step, len(records)
