"""What changed in a plan between a checkpoint and ``xmm train --resume``, and what each change does to the run.

A checkpoint keeps the plan it was written under (``checkpoints/<name>/plan.yaml``). On resume, every changed field
falls in one of three kinds:

- **applied**: the run takes it from the resume point on. The current stage's length (``max_steps`` / ``epochs``:
  the schedule is recomputed for the new length and continues at the step reached, so a cosine decay jumps to where
  the new length puts it; a length at or below the steps done ends the stage at once), learning rates
  (``optimizer.lr``, ``optimizer.groups.*.lr``: the schedule's base rates change, the optimiser's moments are kept),
  ``schedule``, ``max_grad_norm``, ``eval``, ``on_bad_sample``, and the run's ``log_every``, ``checkpoint_every``,
  ``keep_checkpoints``, ``report_to``; and anything of a stage that has not started yet.
- **ignored**: fields of stages that already finished (they are not trained again: start a new run to apply them).
- **inexact**: the current stage's data, batch, objectives or trainable parts, the model, the seed, the order or
  names of the stages: the run continues from the checkpoint, but no uninterrupted run of either plan would have
  produced the result (the data position counts batches of the old size, the optimiser holds the old parameters).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.training.plan import StagePlan

log = logging.getLogger("xmm.training")

# fields of the current stage a resume applies as they are now (prefixes of the stage's field paths)
STAGE_APPLIED = ("max_steps", "epochs", "optimizer.lr", "optimizer.weight_decay", "schedule", "max_grad_norm", "eval")
RUN_APPLIED = ("log_every", "checkpoint_every", "keep_checkpoints", "report_to", "on_bad_sample", "output_dir",
               "cache_dir")


@dataclass
class PlanChanges:
    """Dotted field paths (``stages.1.max_steps: 200 -> 100``) by kind; see the module docstring."""

    applied: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.applied or self.ignored or self.inexact)

    def as_dict(self) -> dict[str, list[str]]:
        return {"applied": self.applied, "ignored": self.ignored, "inexact": self.inexact}


def _diff(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in dict.fromkeys([*old, *new]):
            yield from _diff(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new)):
            yield from _diff(a, b, f"{path}.{i}")
    elif old != new:
        yield path, old, new


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _group_lr(rest: str) -> bool:
    # optimizer.groups.<i>.lr / .weight_decay: a group's rate, its parameters unchanged
    parts = rest.split(".")
    return len(parts) == 4 and parts[:2] == ["optimizer", "groups"] and parts[3] in ("lr", "weight_decay")


def compare_plans(old: dict[str, Any], new: dict[str, Any], *, stage_index: int, stage_done: bool) -> PlanChanges:
    """Classify the differences between two plans (as :meth:`StagePlan.to_yaml` writes them) for a run resumed in
    stage ``stage_index`` (``stage_done``: the checkpoint ended that stage)."""
    changes = PlanChanges()
    old_names = [s.get("name") for s in old.get("stages", [])]
    new_names = [s.get("name") for s in new.get("stages", [])]
    finished = stage_index + (1 if stage_done else 0)  # stages 0 .. finished-1 ended before the checkpoint
    if old_names[:stage_index + 1] != new_names[:stage_index + 1]:
        changes.inexact.append(f"stages: {old_names} -> {new_names} (the stages already trained are not these)")
    for path, a, b in _diff({k: v for k, v in old.items() if k != "stages"},
                            {k: v for k, v in new.items() if k != "stages"}):
        line = f"{path}: {_short(a)} -> {_short(b)}"
        (changes.applied if path.split(".")[0] in RUN_APPLIED else changes.inexact).append(line)
    old_stages = dict(zip(old_names, old.get("stages", [])))
    for i, stage in enumerate(new.get("stages", [])):
        before = old_stages.get(stage.get("name"))
        if before is None or i >= finished and not (i == stage_index and not stage_done):
            continue  # a new stage, or one that has not started: it runs as written now
        for path, a, b in _diff(before, stage):
            line = f"stages.{i}.{path}: {_short(a)} -> {_short(b)}"
            if i < finished:
                changes.ignored.append(line)
            elif path.startswith(STAGE_APPLIED) or _group_lr(path):
                changes.applied.append(line)
            else:
                changes.inexact.append(line)
    return changes


def checkpoint_plan_changes(checkpoint: str | Path, plan: StagePlan, *, stage_index: int,
                            stage_done: bool) -> PlanChanges | None:
    """The changes between the plan saved in ``checkpoint`` and ``plan`` (None: the checkpoint has no plan)."""
    import yaml

    from xmm.training.layout import PLAN_FILE

    saved = Path(checkpoint) / PLAN_FILE
    if not saved.is_file():
        return None
    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    new = yaml.safe_load(plan.to_yaml()) or {}
    return compare_plans(old, new, stage_index=stage_index, stage_done=stage_done)


def report_plan_changes(changes: PlanChanges | None, checkpoint: str | Path) -> None:
    """Tell the user what a resume with a changed plan does (one log line per kind)."""
    if not changes:
        return
    if changes.applied:
        log.warning("resuming %s with a changed plan; applied from here on (a changed length recomputes the "
                    "schedule at the step reached): %s", checkpoint, "; ".join(changes.applied))
    if changes.ignored:
        log.warning("changes to stages that already finished have no effect (start a new run to apply them): %s",
                    "; ".join(changes.ignored))
    if changes.inexact:
        log.warning("these changes cannot be resumed exactly; the run continues from the checkpoint, but neither plan "
                    "run uninterrupted would give its result: %s", "; ".join(changes.inexact))
