"""Run logging: JSONL always, tensorboard/wandb when installed, a tqdm bar on a terminal, a loss-curve PNG.

Only the main process logs. Each record has ``step`` (run-wide optimiser step), ``stage``, ``loss`` and one
``loss/<objective>`` per objective, ``lr``, ``samples_per_s`` and ``skipped`` (bad samples so far).
"""

from __future__ import annotations

import importlib.util
import json
import logging as _logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = _logging.getLogger("xmm.training")


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class RunLogger:
    """Writes ``<run>/logs/train.jsonl`` and, when asked and installed, tensorboard events / a wandb run."""

    def __init__(self, run_dir: str | os.PathLike[str], *, enabled: bool = True, report_to: str | Sequence[str] = "auto",
                 resume_step: int | None = None, config: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.path = self.run_dir / "logs" / "train.jsonl"
        self._tb: Any = None
        self._wandb: Any = None
        self.records: list[dict[str, Any]] = []
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
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

    def _truncate_after(self, step: int) -> None:
        # a killed run may have logged steps after its last checkpoint; they are run (and logged) again on resume
        if not self.path.exists():
            return
        kept = [r for r in read_log(self.path) if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in kept)
        from xmm.io import atomic_write_text

        atomic_write_text(self.path, text)

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
    """Loss per objective against the run-wide step, stage boundaries dashed; written atomically as PNG."""
    steps = [r for r in records if "step" in r and "loss" in r and "event" not in r]
    if not steps:
        return None
    import matplotlib

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


class Progress:
    """A tqdm bar with loss and samples/s, shown only on the main process and on a terminal."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", enabled: bool = True) -> None:
        show = enabled and sys.stderr.isatty() and os.environ.get("XMM_NO_PROGRESS", "") in ("", "0")
        self._bar: Any = None
        if show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}, refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
