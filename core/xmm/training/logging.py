"""Run logging: JSONL always, tensorboard/wandb when installed, a loss-curve PNG.

Only the main process logs, to ``<output_dir>/logs/train.jsonl`` (one JSON object per line). A step record (every
``log_every`` optimiser steps and the last step of a stage) has:

=================  ===============================================================================================
``step``           optimiser steps done in the whole run
``stage``          the stage's name; ``stage_step``: steps done in the stage; ``epoch``: passes over its data begun
``loss``           the weighted total; ``loss/<objective>``: each objective's value (averaged over the step's
                   micro-batches and the processes); ``grad_norm``: before clipping (when ``max_grad_norm`` is set)
``lr``             the learning rate of the first parameter group after this step's scheduler step
``samples_per_s``  examples trained per wall second over the *window*: the ``window_steps`` steps since the previous
                   record, ``window_s`` wall seconds (so it includes data loading, encoding and checkpoints)
``s_per_step``     wall seconds per step over the same window (``window_s / window_steps``)
``step_time_s``    wall seconds of the logged step alone (``step_cpu_s``: its process CPU seconds); one step can be
                   far from the window's mean (a cold feature cache, the loss read of a logging step)
``data_wait_s``    wall seconds the logged step waited for its batches (``data_wait_frac``: the window's waiting
                   over ``window_s``); near 0 when the loader's workers keep ahead of the step
``eta_s``          the stage's remaining steps times ``s_per_step``
``skipped``        bad samples skipped so far in the run
=================  ===============================================================================================

Event records carry ``event``: ``stage_start``, ``stage_end`` (the stage's summary), ``restart`` (a resumed run:
``step`` it continues after, ``attempt``, ``checkpoint``, ``discarded_records`` / ``discarded_steps`` that the
stopped attempt had logged after that checkpoint, which are moved to ``logs/discarded.jsonl`` and run again, and the
plan ``changes``), ``summary``.
"""

from __future__ import annotations

import importlib.util
import json
import logging as _logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xmm.errors import MissingDependencyError, import_optional
from xmm.progress import Progress
from xmm.training.layout import LOG_FILE

__all__ = ["DISCARDED_FILE", "Progress", "RunLogger", "plot_loss_curve", "read_log", "stage_summaries"]

# records a stopped attempt logged after the checkpoint a run resumed from (those steps are run and logged again)
DISCARDED_FILE = "logs/discarded.jsonl"

log = _logging.getLogger("xmm.training")


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class RunLogger:
    """Writes ``<run>/logs/train.jsonl`` and, when asked and installed, tensorboard events / a wandb run."""

    def __init__(self, run_dir: str | os.PathLike[str], *, enabled: bool = True, report_to: str | Sequence[str] = "auto",
                 resume_step: int | None = None, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / LOG_FILE
        self._tb: Any = None
        self._wandb: Any = None
        self.records: list[dict[str, Any]] = []
        self.discarded: list[dict[str, Any]] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.discarded = self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self.records = read_log(self.path)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        sinks = {"jsonl", "tensorboard", "wandb"} if report_to == "auto" else set([report_to] if isinstance(report_to, str) else report_to)
        if "tensorboard" in sinks and _available("tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "logs" / "tensorboard"))
        elif "tensorboard" in sinks and report_to != "auto":
            log.warning("report_to tensorboard: the 'tensorboard' package is not installed (pip install 'xmm-core[tensorboard]')")
        # wandb only when asked for, or in auto mode when the user configured it (no interactive login prompt mid-run)
        wandb_configured = bool(os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
        if "wandb" in sinks and _available("wandb") and (report_to != "auto" or wandb_configured):
            import wandb

            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "xmm"), dir=str(self.run_dir), config=config or {},
                                     resume="allow")

    def _truncate_after(self, step: int) -> list[dict[str, Any]]:
        """Move the records after ``step`` out of the log (into :data:`DISCARDED_FILE`); returns them."""
        # a stopped run may have logged steps after its last checkpoint; they run (and are logged) again on resume,
        # so the log keeps one record per step and the stopped attempt's tail stays readable beside it
        if not self.path.exists():
            return []
        records = read_log(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        dropped = [r for r in records if r.get("step", 0) > step]
        from xmm.io import atomic_write_text

        if dropped:
            attempt = 1 + sum(1 for r in kept if r.get("event") == "restart")
            with open(self.run_dir / DISCARDED_FILE, "a", encoding="utf-8") as f:
                f.writelines(json.dumps({**r, "attempt": attempt}, default=float) + "\n" for r in dropped)
        atomic_write_text(self.path, "".join(json.dumps(r, default=float) + "\n" for r in kept))
        return dropped

    def restarted(self, *, step: int, checkpoint: str, changes: dict[str, Any] | None = None) -> None:
        """Mark in the log that the run resumed after ``step`` from ``checkpoint`` (see the module docstring)."""
        steps = [int(r["step"]) for r in self.discarded if "event" not in r and "step" in r]
        self.event("restart", step=step, attempt=2 + sum(1 for r in self.records if r.get("event") == "restart"),
                   checkpoint=checkpoint, discarded_records=len(self.discarded),
                   discarded_steps=[min(steps), max(steps)] if steps else None, changes=changes or {})

    def restarts(self) -> list[dict[str, Any]]:
        """The ``restart`` events of the log (one per resume)."""
        return [{k: v for k, v in r.items() if k != "event"} for r in self.records if r.get("event") == "restart"]

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        self._file.write(json.dumps(record, default=float) + "\n")
        self._file.flush()
        step = int(record.get("step", 0))
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def event(self, kind: str, **fields: Any) -> None:
        """A non-step record (stage start/end, evaluation, summary) in the same JSONL."""
        self.log({"event": kind, **fields})

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Records of a JSONL log (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def plot_loss_curve(records: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = "xmm training") -> Path | None:
    """Loss per objective against the run-wide step, stage boundaries dashed; written atomically as PNG.

    Returns None (no PNG) when there is no step record, or when matplotlib (the ``plot`` extra) is not installed.
    """
    steps = [r for r in records if "step" in r and "loss" in r and "event" not in r]
    if not steps:
        return None
    try:
        matplotlib = import_optional("matplotlib", extra="plot", purpose="the loss-curve PNG of a run")
    except MissingDependencyError as e:  # an optional extra: the run's JSONL log holds the same numbers
        log.info("no loss curve PNG: %s", e)
        return None

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    from xmm.io import atomic_write

    keys = sorted({k for r in steps for k in r if k.startswith("loss/")})
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    x = [r["step"] for r in steps]
    ax.plot(x, [r["loss"] for r in steps], label="total", linewidth=1.8, color="black")
    for k in keys:
        pts = [(r["step"], r[k]) for r in steps if k in r]
        if pts and len(keys) > 1:
            ax.plot(*zip(*pts), label=k.removeprefix("loss/"), linewidth=1.0)
    prev = None
    for r in steps:
        if prev is not None and r.get("stage") != prev:
            ax.axvline(r["step"] - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(r["step"], ax.get_ylim()[1], f" {r.get('stage')}", va="top", fontsize=8, color="grey")
        prev = r.get("stage")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, format="png"))
    plt.close(fig)
    return out


def stage_summaries(records: Sequence[dict[str, Any]], stage_names: Sequence[str]) -> list[dict[str, Any]]:
    """The logged summaries (``stage_end`` events) of the stages ``stage_names``, in that order: what a resumed run
    puts in ``summary.json`` for the stages an earlier attempt finished. A stage whose end was not logged (the run
    stopped between its checkpoint and its evaluation) gets ``{"stage": name, "logged": False}``."""
    ends: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("event") == "stage_end" and isinstance(r.get("stage"), str):
            ends[r["stage"]] = {k: v for k, v in r.items() if k not in ("event", "step", "index")}
    return [{"stage": name, **ends[name]} if name in ends else {"stage": name, "logged": False}
            for name in stage_names]
