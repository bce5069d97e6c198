"""The demo's joint (integrate) stage: each modality keeps its learning rate and a fixed share of the examples."""

from __future__ import annotations

import json
from pathlib import Path

from xmm.demo.runner import JOINT_SHARE, build_plan, joint_mix, write_joint_data
from xmm.recipes import DemoData, DemoSize, DemoTask, Recipe, RecipeStage


def _recipe(modality: str, align_steps: int, joint_lr: float, batch: int = 4) -> Recipe:
    return Recipe(modality=modality, bridge={"type": "linear"}, stages=(
        RecipeStage(name="align", batch_size=batch, lr=1e-3, steps=align_steps),
        RecipeStage(name="integrate", joint=True, batch_size=batch, lr=joint_lr, steps=1, warmup_ratio=0.0)))


def _task(modality: str) -> DemoTask:
    return DemoTask(modality=modality, title=modality, recipe=modality, make=lambda *a, **k: None, metric="exact",
                    sizes={"quick": DemoSize(n_train=2, n_test=2), "default": DemoSize(n_train=2, n_test=2)})


def _data(root: Path, modality: str, n: int) -> DemoData:
    d = root / modality
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("".join(json.dumps({"id": f"{modality}-{i}"}) + "\n" for i in range(n)))
    return DemoData(train=d / "train.jsonl", test=d / "test.jsonl")


def test_each_modality_gets_its_share_of_the_examples_whatever_its_data_size(tmp_path: Path) -> None:
    # "big" has 400 examples and "small" 10, but small trained twice as many steps alone: it gets 2/3 of the mix
    joint = [(_task("big"), _recipe("big", 30, 1e-4)), (_task("small"), _recipe("small", 60, 5e-4))]
    data = {"big": _data(tmp_path, "big", 400), "small": _data(tmp_path, "small", 10)}
    parts = joint_mix(joint, data)
    steps = (30 + 60) // JOINT_SHARE
    assert [p.examples for p in parts] == [round(steps * 4 / 3), round(steps * 4 * 2 / 3)]
    write_joint_data(parts, seed=7)
    lines = {p.modality: p.target.read_text().splitlines() for p in parts}
    assert len(lines["big"]) == parts[0].examples and len(set(lines["big"])) == parts[0].examples  # cut, no repeats
    assert len(lines["small"]) == parts[1].examples and len(set(lines["small"])) == 10  # every example, repeated
    assert parts[1].target.parent == data["small"].train.parent  # media paths stay relative to their folder
    write_joint_data(parts, seed=7)
    assert parts[0].target.read_text().splitlines() == lines["big"]  # the run seed fixes the mix


def test_the_joint_stage_keeps_each_bridge_s_learning_rate(tmp_path: Path) -> None:
    tasks = [_task("big"), _task("small")]
    recipes = {"big": _recipe("big", 30, 1e-4), "small": _recipe("small", 60, 5e-4)}

    class _Reg:
        def recipe(self, name: str) -> Recipe:
            return recipes[name]

    data = {"big": _data(tmp_path, "big", 4), "small": _data(tmp_path, "small", 4)}
    plan = build_plan(tasks, data, "default", tmp_path, seed=0, registry=_Reg())
    joint = plan["stages"][-1]
    groups = {g["params"][0]: g["lr"] for g in joint["optimizer"]["groups"]}
    assert groups == {"bridge:big": 1e-4, "bridge:small": 5e-4}
    assert joint["data"]["train"] == [str(tmp_path / m / f"joint-{m}.jsonl") for m in ("big", "small")]
