"""Run checkpoints: trained weights (the MultimodalLM format), optimiser, scheduler, RNG and data position.

A checkpoint is a folder under ``<output_dir>/checkpoints/``: ``step-00000050`` (every ``checkpoint_every`` steps)
or ``stage-1-align`` (end of a stage). It holds ``model/`` (``MultimodalLM.save_pretrained``: only what is trained),
``optimizer.pt``, ``scheduler.pt``, ``trainer_state.json`` (stage, step, epoch, batch position, bad-sample counts)
and ``rng/rank-<r>.pt`` per process. All of it is written into a hidden temp folder which is renamed into place,
then ``latest`` (a one-line file naming the folder) is replaced atomically: a run killed at any moment leaves either
the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xmm.errors import CheckpointError
from xmm.io import atomic_write, atomic_write_text

STATE_VERSION = 1
LATEST = "latest"
_PERIODIC = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where a run is. ``epoch``/``batch`` point at the next micro-batch to read in the current stage."""

    stage_index: int = 0
    stage_name: str = ""
    step: int = 0  # optimiser steps done in this stage
    global_step: int = 0  # optimiser steps done in the whole run
    epoch: int = 0
    batch: int = 0
    stage_done: bool = False
    samples_seen: int = 0
    bad_samples: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1
    plan_fingerprint: str = ""
    version: int = STATE_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: Any) -> TrainerState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{source}: trainer_state.json is not valid JSON: {e}") from e
        if data.get("version") != STATE_VERSION:
            raise CheckpointError(f"{source}: trainer state version {data.get('version')} is not {STATE_VERSION}")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


# -- RNG --------------------------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and, when present, CUDA) generator states."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# -- writing ----------------------------------------------------------------------------------------------------
class CheckpointWriter:
    """Writes checkpoints of one run. Every process calls :meth:`save` (each writes its RNG file); rank 0 writes the
    rest and publishes the folder. ``barrier`` synchronises processes (a no-op in a single process)."""

    def __init__(self, root: str | os.PathLike[str], *, rank: int = 0, keep: int = 2, barrier: Callable[[], None] | None = None) -> None:
        self.root = Path(root)
        self.rank = rank
        self.keep = keep
        self.barrier = barrier or (lambda: None)

    def save(
        self,
        name: str,
        *,
        state: TrainerState,
        save_model: Callable[[Path], Any],
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any | None,
        extra_files: dict[str, str] | None = None,
    ) -> Path:
        """Write checkpoint ``name`` (``step-…`` or ``stage-…``) and point ``latest`` at it."""
        final = self.root / name
        tmp = self.root / f".tmp-{name}"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        (tmp / "rng").mkdir(parents=True, exist_ok=True)
        torch.save(rng_state(), tmp / "rng" / f"rank-{self.rank}.pt")
        if self.rank == 0:
            save_model(tmp / "model")
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text)
            (tmp / "trainer_state.json").write_text(state.to_json())
        self.barrier()
        if self.rank == 0:
            _fsync_tree(tmp)
            if final.exists():  # re-saving the same step after a resume: replace it
                old = self.root / f".old-{name}"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            atomic_write_text(self.root / LATEST, name + "\n")
            self._prune()
        self.barrier()
        return final

    def _prune(self) -> None:
        periodic = sorted((int(m.group(1)), p) for p in self.root.iterdir() if (m := _PERIODIC.match(p.name)))
        latest = read_latest_name(self.root)
        for _, p in periodic[: max(0, len(periodic) - self.keep)]:
            if p.name != latest:
                shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    # the rename publishes the folder; make sure its files reached the disk first
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


# -- reading ----------------------------------------------------------------------------------------------------
def read_latest_name(root: str | os.PathLike[str]) -> str | None:
    f = Path(root) / LATEST
    if not f.exists():
        return None
    name = f.read_text().strip()
    return name or None


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The folder ``latest`` points at (None when the run has no checkpoint yet)."""
    name = read_latest_name(root)
    if name is None:
        return None
    path = Path(root) / name
    if not (path / "trainer_state.json").exists():
        raise CheckpointError(f"{Path(root) / LATEST} points at '{name}', which is not a complete checkpoint")
    return path


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainerState

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def optimizer_state(self) -> dict[str, Any] | None:
        return _load(self.path / "optimizer.pt")

    def scheduler_state(self) -> dict[str, Any] | None:
        return _load(self.path / "scheduler.pt")

    def rng_state(self, rank: int) -> dict[str, Any] | None:
        return _load(self.path / "rng" / f"rank-{rank}.pt")


def _load(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read: {e}") from e


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    path = Path(path)
    f = path / "trainer_state.json"
    if not f.exists():
        raise CheckpointError(f"{path} is not a training checkpoint (no trainer_state.json)")
    return LoadedCheckpoint(path, TrainerState.from_json(f.read_text(), source=f))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))
