"""A run folder is untrusted input (issue 17): `--resume` never unpickles, a malformed trainer state or a `latest`
pointer that leads elsewhere is a typed error naming the file, and resuming stays bit-identical."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from xmm.errors import CheckpointError
from xmm.training.checkpointing import latest_checkpoint, load_checkpoint
from xmm.training.loop import train

XMM = [sys.executable, "-m", "xmm.cli.main"]


class _Planted:
    """Unpickling this runs a shell command that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _plant(folder: Path, name: str, marker: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(pickle.dumps(_Planted(marker)))


@pytest.fixture
def killed_run(tmp_path: Path, tiny_llm_dir: Path, tiny_plan, write_task) -> tuple[dict, Path]:
    """A finished 6-step run made to look killed after step 3 (`latest` -> its periodic checkpoint)."""
    write_task(tmp_path, 16)
    plan = tiny_plan(tmp_path, tiny_llm_dir, checkpoint_every=3)
    train(plan, base_dir=tmp_path)
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest").write_text("step-00000003\n")
    shutil.rmtree(tmp_path / "run" / "model")
    return plan, ckpts


def test_planted_pickles_are_never_loaded_and_resume_stays_bit_identical(tmp_path: Path, killed_run, tiny_plan) -> None:
    plan, ckpts = killed_run
    step = ckpts / "step-00000003"
    assert not list(step.rglob("*.pt"))  # the checkpoint itself holds no pickle
    marker = tmp_path / "pwned"
    for name in ("optimizer.pt", "scheduler.pt", "rng/rank-0.pt"):
        _plant(step, name, marker)
    final = ckpts / "stage-1-align" / "trained.safetensors"
    expected = load_file(final)
    final.unlink()
    train(plan, base_dir=tmp_path, resume=True)
    assert not marker.exists()
    got = load_file(final)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in got)


def test_a_legacy_pickle_is_refused_on_xmm_train_resume(tmp_path: Path, killed_run, write_plan, subprocess_env) -> None:
    plan, ckpts = killed_run
    step = ckpts / "step-00000003"
    marker = tmp_path / "pwned"
    (step / "optimizer.json").unlink()  # as an older xmm left it: only optimizer.pt, here a hostile one
    _plant(step, "optimizer.pt", marker)
    path = write_plan(tmp_path, plan)
    proc = subprocess.run([*XMM, "train", str(path), "--resume"], env=subprocess_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "optimizer.pt" in proc.stderr and "cannot read it safely" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(("field", "value"), [("step", "abc"), ("epoch", -1), ("stage_done", "yes"),
                                              ("world_size", 0), ("bad_samples", {"by_kind": {"x": "many"}})])
def test_a_malformed_trainer_state_names_the_field(tmp_path: Path, killed_run, field: str, value: object) -> None:
    _, ckpts = killed_run
    f = ckpts / "step-00000003" / "trainer_state.json"
    data = json.loads(f.read_text())
    data[field] = value
    f.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=f"trainer_state.json: field '{field}'"):
        load_checkpoint(ckpts / "step-00000003")


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "{\"version\": 1, \"step\": " + "[" * 100_000 + "}"])
def test_an_unreadable_trainer_state_is_a_checkpoint_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "trainer_state.json").write_text(text)
    with pytest.raises(CheckpointError, match="trainer_state.json"):
        load_checkpoint(tmp_path)


def test_latest_may_only_name_a_checkpoint_of_its_own_run(tmp_path: Path) -> None:
    other = tmp_path / "other" / "checkpoints" / "step-00000003"
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text(json.dumps({"version": 1}))
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for text in ("../../other/checkpoints/step-00000003", str(other), ".tmp-step-1", "a/b"):
        (ckpts / "latest").write_text(text + "\n")
        with pytest.raises(CheckpointError, match="latest"):
            latest_checkpoint(ckpts)
    (ckpts / "step-00000003").symlink_to(other)  # a link to another run's checkpoint
    (ckpts / "latest").write_text("step-00000003\n")
    with pytest.raises(CheckpointError, match="leads outside"):
        latest_checkpoint(ckpts)
    (ckpts / "step-00000003").unlink()
    (ckpts / "latest").unlink()
    os.mkfifo(ckpts / "latest")  # never opened (it would block)
    with pytest.raises(CheckpointError, match="FIFO"):
        latest_checkpoint(ckpts)
