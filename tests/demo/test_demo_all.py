"""`xmm demo` without training: the installed plugins' demo tasks, their data generators at a tiny size, the staged
plan built from their recipes, and a task from a plugin core does not know."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from xmm import hookimpl
from xmm.demo.runner import JOINT_BUCKETS, JOINT_SHARE, MODES, build_plan, select_tasks, task_recipe
from xmm.errors import ConfigError, RegistryError
from xmm.recipes import DemoData, DemoSize, DemoTask, Recipe, RecipeStage
from xmm.registry import Registry, get_registry

ORDER = ["device", "image", "audio", "video", "speech"]
TINY_TRAIN, TINY_TEST = 6, 4


def test_modes_select_the_installed_tasks_in_order():
    assert [t.modality for t in select_tasks("all")] == ORDER
    assert [t.modality for t in select_tasks("quick")] == [t.modality for t in select_tasks("default")] == ["device", "image"]
    assert [t.modality for t in select_tasks("quick", ["speech-espeak", "image-shapes"])] == ["image", "speech"]
    tasks = {t.modality: t for t in select_tasks("all")}
    assert tasks["speech"].metric == "wer" and "cif_tokens" in task_recipe(tasks["speech"], "all").objectives
    assert MODES == ("quick", "default", "all")
    with pytest.raises(ConfigError, match="mode"):
        select_tasks("fast")
    with pytest.raises(RegistryError, match="no demo task named 'nope'"):
        select_tasks("quick", ["nope"])


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


@pytest.mark.parametrize("name", sorted(get_registry().demo_tasks))
def test_task_data_is_trainer_format_with_disjoint_files(name, tmp_path):
    task = get_registry().demo_task(name)
    modality = task.modality
    if modality == "speech" and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from xmm.training.data import BadSamples, read_manifest

    data = task.make(tmp_path / modality, n_train=TINY_TRAIN, n_test=TINY_TEST, train_seed=0, test_seed=1000)
    assert data.train.exists() and data.test.exists() and data.train != data.test

    specs = {modality: get_registry().modality(modality)}
    bad = BadSamples()
    train = read_manifest(data.train, specs, bad)
    test = read_manifest(data.test, specs, bad)
    assert bad.total == 0, bad.as_dict()
    # the image task asks several questions per training scene
    assert len(train) >= TINY_TRAIN and len(test) == TINY_TEST
    for ex in [*train, *test]:
        roles = [m["role"] for m in ex.messages]
        assert roles == ["user", "assistant"]
        user = ex.messages[0]["content"]
        assert [p["type"] for p in user if p["type"] != "text"] == [modality]
    if data.captions is not None:
        assert len(read_manifest(data.captions, specs, bad)) == TINY_TRAIN and bad.total == 0

    train_files, test_files = _media_paths(data.train), _media_paths(data.test)
    assert len(set(train_files)) == TINY_TRAIN and len(set(test_files)) == TINY_TEST
    assert not set(train_files) & set(test_files)
    assert not {_digest(p) for p in train_files} & {_digest(p) for p in test_files}

    metas = [json.loads(line)["meta"] for line in data.test.read_text().splitlines() if line.strip()]
    if task.metric == "exact":  # per-task rows and chance come from meta.task
        assert all(m.get("task") for m in metas)
    else:  # held-out sentences were never heard in training
        heard = {json.loads(line)["meta"]["transcript"] for line in data.train.read_text().splitlines() if line.strip()}
        assert not heard & {m["transcript"] for m in metas}


def test_build_plan_is_a_valid_stage_plan_for_all_five(tmp_path):
    from xmm.training.plan import StagePlan, load_plan

    tasks = select_tasks("all")
    data = {}
    for t in tasks:
        d = tmp_path / "data" / t.modality
        data[t.modality] = DemoData(train=d / "train.jsonl", test=d / "test.jsonl",
                                    captions=d / "train_captions.jsonl" if t.modality in ("image", "video") else None)
    raw = build_plan(tasks, data, "all", tmp_path, seed=0)
    plan = load_plan(raw, base_dir=tmp_path)  # validates every objective name against the registry
    assert isinstance(plan, StagePlan)
    names = [s.name for s in plan.stages]
    assert [n for n in names if n.startswith("align-")] == [f"align-{m}" for m in ORDER] and names[-1] == "integrate"
    for n in names:  # a task may have a convert stage, right before its alignment stage
        assert n == "integrate" or n.startswith("align-") or names[names.index(n) + 1] == n.replace("convert-", "align-")
    cfg = plan.multimodal_config()
    assert list(cfg.modalities) == ORDER
    assert cfg.modalities["audio"].encoder == "torchcrepe"
    assert cfg.modalities["video"].encoder == "video-frames"
    assert cfg.modalities["speech"].encoder == "whisper-base"
    stages = {s["name"]: s for s in raw["stages"]}
    cif = {"weight": 0.5, "params": {"metric": "l2"}}
    # X-LLM's convert stage: no LLM layer runs
    assert stages["convert-speech"]["objectives"] == {"cif_tokens": {**cif, "weight": 1.0}}
    assert stages["align-speech"]["objectives"] == {"lm": {"weight": 1.0, "params": {}}, "cif_tokens": cif}
    assert stages["convert-video"]["objectives"] == ["guided_answer"]
    assert stages["align-video"]["data"]["train"] == [str(data["video"].train)]  # after a convert stage: questions only
    assert stages["align-audio"]["data"]["train"] == [str(data["audio"].train)]
    assert stages["align-image"]["data"]["train"] == [str(data["image"].train)]  # after a convert stage: questions only
    assert set(stages["integrate"]["trainable"]) == {f"bridge:{m}" for m in ORDER}
    assert stages["integrate"]["objectives"] == {"lm": {"weight": 1.0, "params": {}}, "cif_tokens": cif}
    assert stages["integrate"]["data"]["train"] == [str(data[m].train.parent / f"joint-{m}.jsonl") for m in ORDER]
    for t in tasks:  # the default sizes (``all`` has none of its own) train the recipes' own step counts
        recipe = get_registry().recipe(t.recipe)
        assert stages[f"align-{t.modality}"]["max_steps"] == recipe.stage("align").steps
        assert stages[f"align-{t.modality}"]["optimizer"]["lr"] == recipe.stage("align").lr
    joint_lr = {t.modality: get_registry().recipe(t.recipe).joint_stage.lr for t in tasks}
    assert stages["integrate"]["optimizer"]["lr"] == min(joint_lr.values())
    groups = {g["params"][0]: g["lr"] for g in stages["integrate"]["optimizer"]["groups"]}
    assert all(groups[f"bridge:{m}"] == lr for m, lr in joint_lr.items())  # each bridge keeps its own rate
    assert stages["integrate"]["max_steps"] == sum(stages[f"align-{m}"]["max_steps"] for m in ORDER) // JOINT_SHARE
    assert stages["integrate"]["data"]["buckets"] == JOINT_BUCKETS  # batches of one length (mostly one modality)


# -- a modality core has never heard of: its plugin brings the recipe and the demo task ------------------------
class SmellPlugin:
    @hookimpl
    def xmm_recipes(self):
        return {"smell": Recipe(modality="smell", encoder="nose", bridge={"type": "linear"}, stages=(
            RecipeStage(name="align", objectives=["lm"], data=("train", "captions"), batch_size=4, lr=1e-3, steps=30),
            RecipeStage(name="integrate", joint=True, batch_size=4, lr=1e-4, steps=10, warmup_ratio=0.0)))}

    @hookimpl
    def xmm_demo_tasks(self):
        def make(out_dir, *, n_train, n_test, train_seed, test_seed):
            return DemoData(train=out_dir / f"train{train_seed}.jsonl", test=out_dir / f"test{test_seed}.jsonl",
                            captions=out_dir / "captions.jsonl")

        sizes = {"quick": DemoSize(n_train=2, n_test=2, steps={"align": 3}), "default": DemoSize(n_train=8, n_test=4)}
        return {"smell-roses": DemoTask(modality="smell", title="roses or not", recipe="smell", make=make,
                                        metric="exact", sizes=sizes, order=5)}


def test_a_plugin_task_core_does_not_know_is_planned_from_its_recipe(tmp_path):
    reg = Registry(entry_points=False)
    info = reg.register(SmellPlugin(), name="smell")
    assert info.recipes == ["smell"] and info.demo_tasks == ["smell-roses"] and info.error is None
    tasks = select_tasks("quick", registry=reg)
    assert [t.modality for t in tasks] == ["smell"]
    data = {"smell": tasks[0].make_data(tmp_path, "quick", 3)}
    assert data["smell"].test.name == "test1003.jsonl"
    plan = build_plan(tasks, data, "quick", tmp_path, 3, registry=reg)
    assert plan["model"]["modalities"] == {"smell": {"encoder": "nose", "bridge": {"type": "linear"}}}
    align, joint = plan["stages"]
    assert align["name"] == "align-smell" and align["max_steps"] == 3 and align["trainable"] == ["bridge:smell"]
    assert align["data"]["train"] == [str(tmp_path / "train3.jsonl"), str(tmp_path / "captions.jsonl")]
    assert joint["name"] == "integrate" and joint["max_steps"] == 2 and joint["optimizer"]["lr"] == 1e-4
    assert joint["data"]["train"] == [str(tmp_path / "joint-smell.jsonl")]  # its share, beside its manifests


class TastePlugin:
    """A second unknown modality whose joint stage also reads captions, with a higher learning rate."""

    @hookimpl
    def xmm_recipes(self):
        return {"taste": Recipe(modality="taste", stages=(
            RecipeStage(name="convert", objectives=["guided_answer"], batch_size=8, lr=1e-3, steps=40),
            RecipeStage(name="align", batch_size=8, lr=1e-3, steps=60),
            RecipeStage(name="integrate", joint=True, data=("train", "captions"), batch_size=8, lr=5e-4, steps=20))
        )}

    @hookimpl
    def xmm_demo_tasks(self):
        def make(out_dir, *, n_train, n_test, train_seed, test_seed):
            return DemoData(train=out_dir / "t.jsonl", test=out_dir / "h.jsonl", captions=out_dir / "c.jsonl")

        sizes = {"quick": DemoSize(n_train=2, n_test=2), "default": DemoSize(n_train=2, n_test=2)}
        return {"taste-salt": DemoTask(modality="taste", title="salty or not", recipe="taste", make=make,
                                       metric="exact", sizes=sizes, order=1)}


def test_joint_stage_merges_the_recipes_joint_stages(tmp_path):
    reg = Registry(entry_points=False)
    reg.register(SmellPlugin(), name="smell")
    reg.register(TastePlugin(), name="taste")
    tasks = select_tasks("default", registry=reg)
    assert [t.modality for t in tasks] == ["taste", "smell"]  # by order
    data = {t.modality: t.make_data(tmp_path / t.modality, "default", 0) for t in tasks}
    plan = build_plan(tasks, data, "default", tmp_path, 0, registry=reg)
    assert [s["name"] for s in plan["stages"]] == ["convert-taste", "align-taste", "align-smell", "integrate"]
    joint = plan["stages"][-1]
    assert joint["trainable"] == ["bridge:taste", "bridge:smell"]
    # each modality's share of the examples, mixed beside its manifests (taste's from its train + captions roles)
    assert joint["data"]["train"] == [str(tmp_path / m / f"joint-{m}.jsonl") for m in ("taste", "smell")]
    assert joint["optimizer"]["lr"] == 1e-4 and joint["batch_size"] == 8
    assert {g["params"][0]: g["lr"] for g in joint["optimizer"]["groups"]} == {"bridge:taste": 5e-4, "bridge:smell": 1e-4}
    assert joint["max_steps"] == (60 + 30) // JOINT_SHARE  # from each recipe's alignment stage, the one before its joint stage
    assert joint["objectives"] == ["lm"]


def test_a_task_whose_recipe_trains_another_modality_is_refused():
    reg = Registry(entry_points=False)
    reg.register(SmellPlugin(), name="smell")
    task = reg.demo_task("smell-roses").model_copy(update={"modality": "taste"})
    with pytest.raises(ConfigError, match="trains smell"):
        task_recipe(task, "quick", registry=reg)


def test_no_installed_task_says_where_tasks_come_from():
    with pytest.raises(ConfigError, match="demo tasks come with modality plugins"):
        select_tasks("quick", registry=Registry(entry_points=False))
