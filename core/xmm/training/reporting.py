"""What a stage reports while it trains: its start and end events, a record every ``log_every`` steps (losses,
learning rate, throughput, step times, ETA, skipped samples; the fields are listed in :mod:`xmm.training.logging`)
and its progress (:class:`xmm.progress.Progress`: a bar on a terminal, a line every ``XMM_PROGRESS_EVERY`` seconds
elsewhere). Only the main process writes; every process takes part in the averaging of the losses over processes."""

from __future__ import annotations

import logging
import time
from typing import Any

from xmm.progress import Progress
from xmm.training.checkpointing import TrainerState
from xmm.training.context import RunContext
from xmm.training.distributed import reduce_mean
from xmm.training.logging import RunLogger
from xmm.training.stage import PreparedStage
from xmm.training.step import StepLosses

log = logging.getLogger("xmm.training")


class StageReporter:
    """Reports one stage of a run to ``logger`` (the run's JSONL and its other sinks) and a progress bar.
    ``last``: the losses of the last logged step (over all processes)."""

    def __init__(self, run: RunContext, logger: RunLogger, stage: PreparedStage, state: TrainerState) -> None:
        self.run = run
        self.logger = logger
        self.stage = stage
        self.state = state
        self.last: dict[str, float] = {}
        self._bar: Progress | None = None
        self._window_t, self._window_steps = time.perf_counter(), 0
        self._step_t, self._step_cpu = 0.0, 0.0
        self._wait_at_start, self._window_wait = 0.0, 0.0
        self._pending: tuple[StepLosses, dict[str, Any], float] | None = None

    def started(self) -> None:
        """Log the stage's start (steps, trainable parameters, examples, where a resumed stage continues)."""
        stage, plan = self.stage, self.run.plan
        if self.run.main:
            self.logger.event("stage_start", step=self.state.global_step, stage=stage.name, index=stage.index,
                              total_steps=stage.total_steps, examples=len(stage.data.dataset),
                              trainable=stage.selection.names[:50], trainable_params=stage.selection.num_parameters,
                              resumed_at=stage.step if stage.resumed else None)
            log.info("stage %d/%d '%s': %d steps, %d trainable parameters, %d examples", stage.index + 1,
                     len(plan.stages), stage.name, stage.total_steps, stage.selection.num_parameters,
                     len(stage.data.dataset))
        self._bar = Progress(stage.total_steps, initial=stage.step, desc=f"train {stage.name}", enabled=self.run.main)
        self._window_t, self._window_steps, self._window_wait = time.perf_counter(), 0, 0.0

    def step_begins(self) -> None:
        """Start the clocks of one step (its wall and process CPU time go into its record)."""
        self._step_t, self._step_cpu = time.perf_counter(), time.process_time()
        self._wait_at_start = self.stage.batches.wait_s

    def step_done(self, losses: StepLosses) -> None:
        """Count the step; on a logging step (every ``log_every`` and the last) average its losses over the
        processes (a collective call) and write its record. On an accelerator the losses of a logging step are read
        at the next step's end, once that step's work is queued, so reading them never leaves the device idle."""
        stage, plan = self.stage, self.run.plan
        self._window_steps += 1
        step = stage.step
        wait = stage.batches.wait_s - self._wait_at_start
        self._window_wait += wait
        if self._pending is not None:
            self._write(*self._pending)
            self._pending = None
        if step % plan.log_every and step != stage.total_steps:
            if self._bar is not None:
                self._bar.update(1)
            return
        now = time.perf_counter()
        window_s = max(now - self._window_t, 1e-9)
        # rates over the window (the steps since the previous record), not the last step alone: a logging step
        # also waits for the losses, and a step may load or encode media the others find cached
        rate = self._window_steps * stage.samples_per_step / window_s
        s_per_step = window_s / self._window_steps
        record = {"step": self.state.global_step, "stage": stage.name, "stage_step": step,
                  "epoch": stage.batches.epoch,
                  "lr": stage.optimizer.param_groups[0]["lr"], "samples_per_s": round(rate, 3),
                  "s_per_step": round(s_per_step, 4), "window_steps": self._window_steps,
                  "window_s": round(window_s, 4), "step_time_s": round(now - self._step_t, 4),
                  "step_cpu_s": round(time.process_time() - self._step_cpu, 4),
                  "data_wait_s": round(wait, 5), "data_wait_frac": round(self._window_wait / window_s, 4),
                  "eta_s": round(s_per_step * (stage.total_steps - step), 1), "skipped": self.run.bad.total}
        self._window_t, self._window_steps, self._window_wait = now, 0, 0.0
        if self.run.accelerator.device.type != "cpu" and step != stage.total_steps:
            self._pending = (losses, record, rate)
        else:
            self._write(losses, record, rate)

    def _write(self, losses: StepLosses, record: dict[str, Any], rate: float) -> None:
        values = reduce_mean(self.run.accelerator, losses.read())
        # the losses first, as before, then the step's timings
        self.logger.log({**{k: record[k] for k in ("step", "stage", "stage_step", "epoch")},
                         **{k: round(v, 6) for k, v in values.items()}, **record})
        self.last = values
        if self._bar is not None:
            self._bar.update(1, loss=values.get("loss", float("nan")), samples_s=round(rate, 3))

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()

    def ended(self, summary: dict[str, Any]) -> None:
        """Log the stage's summary (steps, last losses, rank digests, evaluation)."""
        if self.run.main:
            self.logger.event("stage_end", step=self.state.global_step, stage=self.stage.name,
                              **{k: v for k, v in summary.items() if k != "stage"})
