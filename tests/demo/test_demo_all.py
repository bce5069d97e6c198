"""`xmm demo --all` without training: the five tasks, their data generators at a tiny size, and the staged plan."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from xmm.demo.runner import MODES, build_plan, select_tasks
from xmm.demo.tasks import DEFAULT_SET, ORDER, TASKS, Size, TaskData

NEW = ("audio", "video", "speech")
TINY = Size(n_train=6, n_test=4, align_steps=2)


def test_all_mode_selects_the_five_tasks_in_order():
    assert [t.modality for t in select_tasks("all")] == list(ORDER) == ["device", "image", "audio", "video", "speech"]
    assert [t.modality for t in select_tasks("quick")] == list(DEFAULT_SET) == ["device", "image"]
    for name in ORDER:
        task = TASKS[name]
        assert task.modality == name and task.metric in ("exact", "wer")
        assert {"quick", "default"} <= set(task.sizes)
    assert TASKS["speech"].metric == "wer" and "cif_quantity" in TASKS["speech"].objectives
    assert MODES == ("quick", "default", "all")


def _media_paths(manifest: Path) -> list[Path]:
    out = []
    for line in manifest.read_text().splitlines():
        if line.strip():
            for part in json.loads(line)["messages"][0]["content"]:
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    out.append((manifest.parent / part["path"]).resolve())
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("modality", NEW)
def test_task_data_is_trainer_format_with_disjoint_files(modality, tmp_path):
    pytest.importorskip(f"xmm_plugin_{modality}.synthetic")
    if modality == "speech" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from xmm.registry import get_registry
    from xmm.training.data import BadSamples, read_manifest

    task = TASKS[modality]
    data = task.make(tmp_path / modality, TINY, 0)
    assert data.train.exists() and data.test.exists() and data.train != data.test

    specs = {modality: get_registry().modality(modality)}
    bad = BadSamples()
    train = read_manifest(data.train, specs, bad)
    test = read_manifest(data.test, specs, bad)
    assert bad.total == 0, bad.as_dict()
    assert len(train) == TINY.n_train and len(test) == TINY.n_test
    for ex in [*train, *test]:
        roles = [m["role"] for m in ex.messages]
        assert roles == ["user", "assistant"]
        user = ex.messages[0]["content"]
        assert [p["type"] for p in user if p["type"] != "text"] == [modality]
    if data.captions is not None:
        assert len(read_manifest(data.captions, specs, bad)) == TINY.n_train and bad.total == 0

    train_files, test_files = _media_paths(data.train), _media_paths(data.test)
    assert len(set(train_files)) == TINY.n_train and len(set(test_files)) == TINY.n_test
    assert not set(train_files) & set(test_files)
    assert not {_digest(p) for p in train_files} & {_digest(p) for p in test_files}

    metas = [json.loads(line)["meta"] for line in data.test.read_text().splitlines() if line.strip()]
    if task.metric == "exact":  # per-task rows and chance come from meta.task
        assert all(m.get("task") for m in metas)
    else:  # held-out sentences were never heard in training
        heard = {json.loads(line)["meta"]["transcript"] for line in data.train.read_text().splitlines() if line.strip()}
        assert not heard & {m["transcript"] for m in metas}


def test_build_plan_is_a_valid_stage_plan_for_all_five(tmp_path):
    from xmm.training.objectives import get_objective
    from xmm.training.plan import StagePlan, load_plan

    tasks = select_tasks("all")
    data = {}
    for t in tasks:
        d = tmp_path / "data" / t.modality
        data[t.modality] = TaskData(train=d / "train.jsonl", test=d / "test.jsonl",
                                    captions=d / "train_captions.jsonl" if t.modality in ("image", "video") else None)
    raw = build_plan(tasks, data, "all", tmp_path, seed=0)
    plan = load_plan(raw, base_dir=tmp_path)
    assert isinstance(plan, StagePlan)
    names = [s.name for s in plan.stages]
    assert [n for n in names if n.startswith("align-")] == [f"align-{m}" for m in ORDER] and names[-1] == "integrate"
    for n in names:  # a task may have a convert stage, right before its alignment stage
        assert n == "integrate" or n.startswith("align-") or names[names.index(n) + 1] == n.replace("convert-", "align-")
    cfg = plan.multimodal_config()
    assert list(cfg.modalities) == list(ORDER)
    assert cfg.modalities["audio"].encoder == "torchcrepe"
    assert cfg.modalities["video"].encoder == "video-frames"
    assert cfg.modalities["speech"].encoder == "whisper-base"
    stages = {s["name"]: s for s in raw["stages"]}
    assert stages["align-speech"]["objectives"] == ["lm", "cif_quantity"]
    assert stages["align-video"]["data"]["train"][1].endswith("train_captions.jsonl")
    assert stages["align-audio"]["data"]["train"] == [str(data["audio"].train)]
    assert set(stages["integrate"]["trainable"]) == {f"bridge:{m}" for m in ORDER}
    assert set(stages["integrate"]["objectives"]) == {"lm", "cif_quantity"}
    for stage in raw["stages"]:
        for name in stage["objectives"]:
            get_objective(name)  # registered
    for t in tasks:  # "all" falls back to the default size where a task has no "all" entry
        assert stages[f"align-{t.modality}"]["max_steps"] == (t.sizes.get("all") or t.sizes["default"]).align_steps
