"""The demo's tasks: for each modality, how to make its data, which encoder/bridge to use and how to score it.

Each task's generator comes from the modality's own plugin (the same generators users can run as CLIs), so the demo
exercises the plugins as installed. Sizes are per run mode (``quick``, ``default``, ``all``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xmm.errors import MissingDependencyError


@dataclass(frozen=True)
class Size:
    """How much data and training one task gets in a run mode."""

    n_train: int  # generated training items (images, telemetry windows, clips, ...)
    n_test: int  # generated held-out items
    align_steps: int  # optimiser steps of the modality's alignment stage
    eval_limit: int | None = None  # held-out examples scored (None = all)


@dataclass
class TaskData:
    """Manifests of one task: question-answer training data, caption pairs for alignment, the held-out questions."""

    train: Path
    test: Path
    captions: Path | None = None


@dataclass
class DemoTask:
    """One modality's demo task."""

    modality: str
    title: str
    plugin: str  # distribution that provides the modality (for the missing-plugin message)
    metric: str
    make: Callable[[Path, Size, int], TaskData]
    model: dict[str, Any]  # the modality's entry in MultimodalConfig.modalities
    sizes: dict[str, Size]
    batch_size: int = 16
    lr: float = 1e-3
    trainable: list[str] = field(default_factory=list)  # align-stage selectors besides bridge:<modality>
    trainable_lr: float | None = None  # learning rate of those extra selectors (e.g. an encoder trained from scratch)
    max_new_tokens: int = 8
    chance: Callable[[list[str], list[str]], float] | None = None  # (train answers, test answers) -> chance score


def _import(module: str, dist: str, modality: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise MissingDependencyError(dist, command=f"pip install -e plugins/{dist}", purpose=f"the {modality} demo") from e


# -- device ------------------------------------------------------------------------------------------------------
def _make_device(out: Path, size: Size, seed: int) -> TaskData:
    synthetic = _import("xmm_plugin_device.synthetic", "xmm-plugin-device", "device")
    train = synthetic.generate(out, n=size.n_train, seed=seed, split="train")
    test = synthetic.generate(out, n=size.n_test, seed=seed + 1000, split="test", captions=False)
    return TaskData(train=train.manifest, test=test.manifest, captions=train.captions)


# -- image --------------------------------------------------------------------------------------------------------
def _make_image(out: Path, size: Size, seed: int) -> TaskData:
    synthetic = _import("xmm_plugin_image.synthetic", "xmm-plugin-image", "image")
    train = synthetic.make_shapes_dataset(out, size.n_train, seed, questions_per_image=3, split_name="train")
    test = synthetic.make_shapes_dataset(out, size.n_test, seed + 1000, questions_per_image=1, split_name="test")
    return TaskData(train=train, test=test, captions=out / "train_captions.jsonl")


TASKS: dict[str, DemoTask] = {
    "device": DemoTask(
        modality="device",
        title="device telemetry questions and commands",
        plugin="xmm-plugin-device",
        metric="exact",
        make=_make_device,
        model={},  # the plugin's defaults: the trainable device transformer and its bridge
        # X-LLM trains an interface that has no pretrained encoder together with it in the alignment stage
        trainable=["encoder:device"],
        trainable_lr=1e-3,
        sizes={
            "quick": Size(n_train=96, n_test=24, align_steps=6),
            "default": Size(n_train=1600, n_test=300, align_steps=180),
        },
        batch_size=8,
        lr=3e-3,
        max_new_tokens=16,
    ),
    "image": DemoTask(
        modality="image",
        title="shape scenes: colour, shape, position, count",
        plugin="xmm-plugin-image",
        metric="exact",
        make=_make_image,
        # EfficientNet-Lite0 gives a 7x7 grid of 1280-d features, pooled to 3x3: the five positions fall in
        # distinct cells, and 9 tokens instead of 49 keep each LLM step short (LLaVA-1.5's MLP per token)
        model={"encoder": "efficientnet-lite0", "encoder_config": {"pool_grid": 3}, "bridge": {"type": "mlp"}},
        sizes={
            "quick": Size(n_train=48, n_test=24, align_steps=6),
            "default": Size(n_train=700, n_test=300, align_steps=200),
        },
        lr=2e-3,
    ),
}

ORDER = ("device", "image", "audio", "video", "speech")
DEFAULT_SET = ("device", "image")
