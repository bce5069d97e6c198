"""Run checkpoints: trained weights (the MultimodalLM format), optimiser, scheduler, RNG and data position.

A checkpoint is a folder under ``<output_dir>/checkpoints/``: ``step-00000050`` (every ``checkpoint_every`` steps)
or ``stage-1-align`` (end of a stage). It holds ``model/`` (``MultimodalLM.save_pretrained``: only what is trained),
``optimizer.{json,safetensors}``, ``scheduler.{json,safetensors}``, ``trainer_state.json`` (stage, step, epoch, batch
position, bad-sample counts) and ``rng/rank-<r>.{json,safetensors}`` per process. All of it is written into a hidden
temp folder which is renamed into place, then ``latest`` (a one-line file naming the folder) is replaced atomically:
a run killed at any moment leaves either the previous checkpoint or the new one, never half of one.

Nothing here unpickles: run state is safetensors + JSON (:mod:`xmm.persist.state`), so a run folder from anywhere
cannot run code on ``--resume``. Checkpoints of older xmm versions (``optimizer.pt`` ...) are read with
``torch.load(weights_only=True)`` only, torch's unpickler that builds tensors and plain containers and nothing else.
``latest`` must name a checkpoint folder directly inside ``checkpoints/`` (never another run's folder), and a
malformed ``trainer_state.json`` is a :class:`~xmm.errors.CheckpointError` naming the field.
"""

from __future__ import annotations

import json
import logging
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

from xmm.errors import CheckpointError, MediaError
from xmm.io import atomic_write, atomic_write_text, publish_dir
from xmm.limits import check_file, read_file
from xmm.persist.state import has_state, load_state, save_state
from xmm.training.layout import LATEST, MODEL_DIR, TRAINER_STATE

log = logging.getLogger(__name__)

STATE_VERSION = 1
_PERIODIC = re.compile(r"^step-(\d+)$")
# what `latest` may name: one folder name inside checkpoints/ (no separator, no "..", no hidden temp folder)
_CHECKPOINT_NAME = re.compile(r"^(?!\.)[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
OPTIMIZER_STATE, SCHEDULER_STATE, RNG_DIR = "optimizer", "scheduler", "rng"
TRAINER_STATE_BYTES = 64 << 20  # counts and a few messages; bad-sample keys grow with the data, not unboundedly


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
    def from_json(cls, text: str | bytes, *, source: Any) -> TrainerState:
        """Parse and type-check a ``trainer_state.json``; any malformed value raises :class:`CheckpointError`
        naming the file and the field."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise CheckpointError(f"{source}: trainer_state.json is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: trainer_state.json must hold a JSON object, got {type(data).__name__}")
        if data.get("version") != STATE_VERSION:
            raise CheckpointError(f"{source}: trainer state version {data.get('version')!r} is not {STATE_VERSION}")
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        for name, value in values.items():
            problem = _field_problem(name, value)
            if problem:
                raise CheckpointError(f"{source}: field '{name}': {problem} (got {_shown(value)})")
        return cls(**values)


_INT_FIELDS = {"stage_index": 0, "step": 0, "global_step": 0, "epoch": 0, "batch": 0, "samples_seen": 0,
               "world_size": 1, "version": 0}


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field_problem(name: str, value: Any) -> str | None:
    """What is wrong with one field of a trainer state (None when it is fine)."""
    if name in _INT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool):
            return "must be an integer"
        return f"must be >= {_INT_FIELDS[name]}" if value < _INT_FIELDS[name] else None
    if name in ("stage_name", "plan_fingerprint"):
        return None if isinstance(value, str) else "must be a string"
    if name == "stage_done":
        return None if isinstance(value, bool) else "must be true or false"
    if name == "bad_samples":
        return _bad_samples_problem(value)
    return None


def _bad_samples_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "must be an object"
    by_kind, seen, examples = value.get("by_kind", {}), value.get("seen", {}), value.get("examples", [])
    if not isinstance(by_kind, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                                and v >= 0 for k, v in by_kind.items()):
        return "'by_kind' must map kinds to counts"
    if not isinstance(seen, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in seen.items()):
        return "'seen' must map sample keys to kinds"
    if not isinstance(examples, list) or not all(isinstance(e, str) for e in examples):
        return "'examples' must be a list of strings"
    return None


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
def partitioned_optimizer(optimizer: Any) -> bool:
    """True for a DeepSpeed (ZeRO) optimiser: each process holds only its partition of the state, so rank 0's
    ``state_dict`` is not the run's and is not saved; such a run continues only from a stage's end checkpoint."""
    # by name: importing accelerate's DeepSpeed module to test the type is not worth it where DeepSpeed is absent
    return type(optimizer).__name__ == "DeepSpeedOptimizerWrapper"


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
        save_state(rng_state(), tmp / RNG_DIR, f"rank-{self.rank}")
        if self.rank == 0:
            save_model(tmp / MODEL_DIR)
            if optimizer is not None and not partitioned_optimizer(optimizer):
                save_state(optimizer.state_dict(), tmp, OPTIMIZER_STATE)
            if scheduler is not None:
                save_state(scheduler.state_dict(), tmp, SCHEDULER_STATE)
            for fname, text in (extra_files or {}).items():
                (tmp / fname).write_text(text)
            (tmp / TRAINER_STATE).write_text(state.to_json())
        self.barrier()
        if self.rank == 0:
            publish_dir(tmp, final)  # fsynced, then swapped in (re-saving the same step after a resume replaces it)
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


# -- reading ----------------------------------------------------------------------------------------------------
def read_latest_name(root: str | os.PathLike[str]) -> str | None:
    """The checkpoint name ``root/latest`` holds (None when there is none yet). The name must be one folder name
    (no ``/``, no ``..``): a ``latest`` that leads anywhere else raises :class:`CheckpointError`."""
    f = Path(root) / LATEST
    if not os.path.lexists(f):
        return None
    try:
        raw = read_file(f, max_bytes=4096, what="checkpoint pointer")
    except MediaError as e:
        raise CheckpointError(f"{f}: {str(e).split(': ', 1)[-1]}") from None
    try:
        name = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{f}: not a checkpoint name (not UTF-8 text)") from None
    if not name:
        return None
    if not _CHECKPOINT_NAME.fullmatch(name):
        raise CheckpointError(f"{f}: {_shown(name)} is not the name of a checkpoint folder inside {Path(root)} "
                              "(a run's 'latest' may only name one of its own checkpoints)")
    return name


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The folder ``latest`` points at (None when the run has no checkpoint yet); it must really be inside ``root``
    (a symlinked checkpoint leading to another run folder is refused)."""
    name = read_latest_name(root)
    if name is None:
        return None
    path = Path(root) / name
    real_root = os.path.realpath(root)
    if os.path.dirname(os.path.realpath(path)) != real_root:
        raise CheckpointError(f"{Path(root) / LATEST} points at '{name}', which leads outside {Path(root)}")
    if not (path / TRAINER_STATE).is_file():
        raise CheckpointError(f"{Path(root) / LATEST} points at '{name}', which is not a complete checkpoint")
    return path


@dataclass
class LoadedCheckpoint:
    path: Path
    state: TrainerState

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    def optimizer_state(self) -> dict[str, Any] | None:
        return _load(self.path, OPTIMIZER_STATE, "optimizer.pt")

    def scheduler_state(self) -> dict[str, Any] | None:
        return _load(self.path, SCHEDULER_STATE, "scheduler.pt")

    def rng_state(self, rank: int) -> dict[str, Any] | None:
        return _load(self.path / RNG_DIR, f"rank-{rank}", f"rank-{rank}.pt")


def _load(folder: Path, name: str, legacy: str) -> Any:
    """State ``name`` (safetensors + JSON); else an older xmm's ``legacy`` file through torch's weights-only
    unpickler, which builds tensors and plain containers and refuses everything else; else None."""
    if has_state(folder, name):
        return load_state(folder, name)
    path = folder / legacy
    if not os.path.lexists(path):
        return None
    log.warning("%s: reading run state saved by an older xmm (weights-only; the next checkpoint is safetensors)", path)
    try:
        check_file(path, max_bytes=1 << 40, what="state file")  # special files are refused without being opened
    except MediaError as e:
        raise CheckpointError(f"{path}: {str(e).split(': ', 1)[-1]}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch's UnpicklingError, a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read it safely (only tensors and plain values are accepted): "
                              f"{type(e).__name__}") from None


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedCheckpoint:
    path = Path(path)
    f = path / TRAINER_STATE
    if not os.path.lexists(f):
        raise CheckpointError(f"{path} is not a training checkpoint (no trainer_state.json)")
    try:
        raw = read_file(f, max_bytes=TRAINER_STATE_BYTES, what="trainer state")
    except MediaError as e:
        raise CheckpointError(f"{f}: {str(e).split(': ', 1)[-1]}") from None
    return LoadedCheckpoint(path, TrainerState.from_json(raw, source=f))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))
