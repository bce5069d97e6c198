"""Fixtures of the trainer tests: the `vec` test modality over xmm.testing's tiny LLM, and a synthetic task (a
vector's pattern -> a colour word) written as JSONL manifests. The helpers are served as fixtures of the same name
(``write_task``, ``tiny_plan``, ``write_plan``, ``subprocess_env``), never imported from this conftest."""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
COLOURS = ["red", "green", "blue", "yellow"]
# the `vec` test modality (xmm_tiny_training_plugin) is imported by name, by this process and by the `xmm` processes
# the tests start (subprocess_env puts this folder on their PYTHONPATH)
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def write_task(root: Path, n: int, *, name: str = "train.jsonl", seed: int = 0, bad_lines: bool = False) -> Path:
    """`n` examples: a vector whose hot position (0..3) names a colour. Media paths are relative to the manifest."""
    rng = random.Random(seed)
    (root / "vec").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        k = i % len(COLOURS)
        values = [rng.uniform(-0.1, 0.1) for _ in range(8)]
        values[k] += 1.0
        values[k + 4] -= 1.0
        rel = f"vec/{name.split('.')[0]}-{i}.vec"
        (root / rel).write_text(" ".join(f"{v:.4f}" for v in values))
        lines.append({"messages": [
            {"role": "user", "content": [{"type": "vec", "path": rel}, {"type": "text", "text": "Which colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": COLOURS[k]}]},
        ]})
    text = "".join(json.dumps(x) + "\n" for x in lines)
    if bad_lines:
        (root / "vec" / "corrupt.vec").write_text("not numbers at all")
        text += "{this is not json\n"
        text += json.dumps({"messages": [{"role": "user", "content": [{"type": "vec", "path": "vec/missing.vec"}]},
                                         {"role": "assistant", "content": "red"}]}) + "\n"
        text += json.dumps({"messages": [{"role": "user", "content": [{"type": "vec", "path": "vec/corrupt.vec"}]},
                                         {"role": "assistant", "content": "red"}]}) + "\n"
    path = root / name
    path.write_text(text)
    return path


def tiny_plan(root: Path, llm_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A plan dict (paths relative to `root`) training the MLP bridge of the `vec` modality."""
    stage = {"name": "align", "trainable": ["bridge:vec"], "data": {"train": "train.jsonl"},
             "objectives": {"lm": 1.0}, "optimizer": {"lr": 3e-3}, "max_steps": 6, "batch_size": 4,
             "mixed_precision": "no"}
    stage.update(overrides.pop("stage", {}))
    plan = {
        "model": {"llm": str(llm_dir), "modalities": {"vec": {}}, "autocast": "off"},
        "plugins": ["xmm_tiny_training_plugin"],
        "output_dir": "run",
        "cache_dir": "cache",
        "seed": 3,
        "stages": [stage],
    }
    plan.update(overrides)
    return plan


def write_plan(root: Path, plan: dict[str, Any], name: str = "plan.yaml") -> Path:
    import yaml

    path = root / name
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def subprocess_env(tmp: Path) -> dict[str, str]:
    """Environment for `xmm` subprocesses: the test plugin importable, a private XMM_HOME, no progress bars."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XMM_HOME"] = str(tmp / "xmm_home")
    env["XMM_NO_PROGRESS"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.fixture(autouse=True)
def _trainer_tests(xmm_home: Path, one_thread: None) -> None:
    """Every trainer test runs in an empty $XMM_HOME with one torch thread (xmm.testing fixtures)."""


@pytest.fixture(name="write_task")
def _write_task() -> Callable[..., Path]:
    return write_task


@pytest.fixture(name="tiny_plan")
def _tiny_plan() -> Callable[..., dict[str, Any]]:
    return tiny_plan


@pytest.fixture(name="write_plan")
def _write_plan() -> Callable[..., Path]:
    return write_plan


@pytest.fixture(name="subprocess_env")
def _subprocess_env() -> Callable[[Path], dict[str, str]]:
    return subprocess_env


@pytest.fixture
def colours() -> list[str]:
    """The answers of the `vec` task, in the order of the vector's hot position."""
    return list(COLOURS)


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    root = tmp_path / "task"
    write_task(root, 16)
    return root


@pytest.fixture
def tiny_model(tiny_llm_dir: Path, device: Any) -> Any:
    """A MultimodalLM on the test device: xmm.testing's tiny Llama + `vec` modality with an MLP bridge."""
    import torch
    from xmm.model import MultimodalLM
    from xmm.training.plugins import import_plugins

    import_plugins(["xmm_tiny_training_plugin"])
    torch.manual_seed(0)
    return MultimodalLM.from_config({"llm": str(tiny_llm_dir), "modalities": {"vec": {}}, "autocast": "off",
                                     "device": str(device)})
