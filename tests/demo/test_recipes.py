"""The Recipe / DemoTask contract (xmm.recipes) and every installed plugin's recipes and demo tasks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from xmm.errors import ConfigError
from xmm.recipes import DEMO_MODES, DemoData, DemoSize, DemoTask, Recipe, RecipeStage
from xmm.registry import get_registry

REGISTRY = get_registry()


def _recipe(**over) -> Recipe:
    stages = (
        RecipeStage(name="convert", trainable=("bridge:{modality}", "encoder:{modality}"),
                    lr_groups={"encoder:{modality}": 1e-3}, objectives=["guided_answer"], batch_size=32, lr=3e-3,
                    steps=2000),
        RecipeStage(name="align", objectives={"lm": 1.0, "cif_quantity": 0.5}, data=("train", "captions"), batch_size=8,
                    lr=2e-3, steps=150),
        RecipeStage(name="integrate", joint=True, batch_size=8, lr=4e-4, steps=50, warmup_ratio=0.0),
    )
    return Recipe(**{"modality": "vec", "encoder": "tiny-vec", "bridge": {"type": "mlp", "hidden_dim": 8},
                     "stages": stages, **over})


def test_plan_stages_write_the_recipe_as_plan_entries():
    stages = _recipe().plan_stages({"train": ["q.jsonl"], "captions": ["c.jsonl"]}, suffix="vec")
    assert [s["name"] for s in stages] == ["convert-vec", "align-vec", "integrate-vec"]
    convert, align, joint = stages
    assert convert["trainable"] == ["bridge:vec", "encoder:vec"]
    assert convert["optimizer"] == {"type": "adamw", "lr": 3e-3, "weight_decay": 0.0,
                                    "groups": [{"params": ["encoder:vec"], "lr": 1e-3}]}
    assert convert["schedule"] == {"type": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.1}
    assert convert["objectives"] == ["guided_answer"] and convert["data"] == {"train": ["q.jsonl"]}
    assert convert["max_steps"] == 2000 and convert["batch_size"] == 32
    assert align["objectives"] == {"lm": 1.0, "cif_quantity": 0.5}  # weights other than 1 are written out
    assert align["data"] == {"train": ["q.jsonl", "c.jsonl"]} and "groups" not in align["optimizer"]
    assert joint["schedule"]["warmup_steps"] == 1  # at least one warm-up step
    # without captions the stage reads the questions alone; the joint stage can be left out
    alone = _recipe().plan_stages({"train": ["q.jsonl"]}, joint=False)
    assert [s["name"] for s in alone] == ["convert", "align"] and alone[1]["data"] == {"train": ["q.jsonl"]}
    with pytest.raises(ConfigError, match="data.train"):
        _recipe().plan_stages({"captions": ["c.jsonl"]})


def test_plan_stages_validate_as_a_stage_plan(tmp_path):
    from xmm.training.plan import load_plan

    r = _recipe(modality="image", encoder=None, bridge=None)
    plan = load_plan({"model": {"llm": "smollm2", "modalities": {"image": r.modality_config()}},
                      "stages": r.plan_stages({"train": [str(tmp_path / "q.jsonl")]})}, base_dir=tmp_path)
    assert [s.name for s in plan.stages] == ["convert", "align", "integrate"]
    assert {o.name: o.weight for o in plan.stages[1].objectives} == {"lm": 1.0, "cif_quantity": 0.5}


def test_modality_config_sets_only_what_the_recipe_chooses():
    assert _recipe().modality_config() == {"encoder": "tiny-vec", "bridge": {"type": "mlp", "hidden_dim": 8}}
    assert _recipe(encoder=None, bridge=None).modality_config() == {}
    assert _recipe(encoder_config={"scale": 2.0}).modality_config()["encoder_config"] == {"scale": 2.0}


def test_sizing_steps():
    r = _recipe()
    assert [s.steps for s in r.with_steps({"convert": 10}).stages] == [10, 150, 50]
    assert [s.steps for s in r.stages] == [2000, 150, 50]  # copies, the recipe itself is unchanged
    assert [s.steps for s in r.scaled(0.1).stages] == [200, 15, 5]
    assert [s.steps for s in r.scaled(0.0001).stages] == [1, 1, 1]
    per_step = {"convert": 0.1, "align": 1.0, "integrate": 1.0}
    assert r.seconds(per_step) == 400.0
    assert r.fit_budget(1000, per_step) is r  # fits: the author's counts are kept, never raised
    fitted = r.fit_budget(200, per_step)
    assert [s.steps for s in fitted.stages] == [1000, 75, 25] and fitted.seconds(per_step) <= 200
    with pytest.raises(ConfigError, match="steps.nope"):
        r.with_steps({"nope": 3})
    with pytest.raises(ConfigError, match="steps.align"):
        r.with_steps({"align": 0})
    with pytest.raises(ConfigError, match="integrate"):
        r.seconds({"convert": 0.1, "align": 1.0})


def test_warmup_is_exact():
    stage = RecipeStage(name="s", batch_size=1, lr=1.0, steps=2000, warmup_ratio=0.05)
    assert stage.warmup_steps == 100
    assert stage.model_copy(update={"steps": 6}).warmup_steps == 1
    assert stage.model_copy(update={"steps": 150}).warmup_steps == 7


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"objectives": {"lm": 1.0, "qformer_itc": 0.0}}, "leave out an objective that does not apply"),
    ({"objectives": {}}, "objectives"),
    ({"trainable": ("bridge:{name}",)}, "only placeholder"),
    ({"lr_groups": {"encoder:{modality}": 1e-3}}, "not in trainable"),
    ({"data": ("captions",)}, "must include 'train'"),
    ({"name": "a b"}, "name"),
    ({"steps": 0}, "steps"),
])
def test_bad_stages_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        RecipeStage(**{"name": "s", "batch_size": 1, "lr": 1.0, "steps": 1, **kwargs})


def test_bad_recipes_are_refused():
    stage = RecipeStage(name="s", batch_size=1, lr=1.0, steps=1)
    joint = stage.model_copy(update={"name": "j", "joint": True})
    with pytest.raises(ValidationError, match="unique"):
        Recipe(modality="m", stages=(stage, stage))
    with pytest.raises(ValidationError, match="joint"):
        Recipe(modality="m", stages=(joint, stage))
    with pytest.raises(ValidationError, match="'type'"):
        Recipe(modality="m", bridge={"hidden_dim": 8}, stages=(stage,))
    with pytest.raises(ValidationError, match="stages"):
        Recipe(modality="m", stages=())


def _task(**over) -> DemoTask:
    def make(out_dir, *, n_train, n_test, train_seed, test_seed):
        return DemoData(train=out_dir / f"train-{n_train}-{train_seed}.jsonl", test=out_dir / f"test-{n_test}-{test_seed}.jsonl")

    return DemoTask(**{"modality": "vec", "title": "t", "recipe": "vec", "make": make, "metric": "exact",
                       "sizes": {"quick": DemoSize(n_train=4, n_test=2), "default": DemoSize(n_train=40, n_test=20)},
                       **over})


def test_demo_task_sizes_and_seeds(tmp_path):
    t = _task()
    assert t.size("all") == t.size("default") and t.size("quick").n_train == 4
    data = t.make_data(tmp_path, "quick", 7)
    assert data.train.name == "train-4-7.jsonl" and data.test.name == "test-2-1007.jsonl"
    assert data.manifests() == {"train": [str(data.train)]}
    with pytest.raises(ConfigError, match="mode"):
        t.size("huge")
    same = _task(make=lambda out_dir, **k: DemoData(train=out_dir / "a.jsonl", test=out_dir / "a.jsonl"))
    with pytest.raises(ConfigError, match="held-out split over the training one"):
        same.make_data(tmp_path, "quick", 0)
    with pytest.raises(ValidationError, match="default"):
        _task(sizes={"quick": DemoSize(n_train=1, n_test=1)})
    with pytest.raises(ValidationError, match="own seed"):
        _task(held_out_seed_offset=0)


# -- every installed plugin's recipes and demo tasks --------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REGISTRY.recipes))
def test_installed_recipe_names_registered_parts(name):
    recipe = REGISTRY.recipe(name)
    assert isinstance(recipe, Recipe)
    spec = REGISTRY.modality(recipe.modality)
    assert recipe.encoder is None or recipe.encoder in REGISTRY.encoders
    bridge = recipe.bridge or dict(spec.bridge)
    assert bridge["type"] in REGISTRY.bridges
    unknown = [o for o in recipe.objectives if o not in REGISTRY.objectives]
    assert not unknown, f"recipe {name} names objectives nobody registers: {unknown}"


@pytest.mark.parametrize("name", sorted(REGISTRY.demo_tasks))
def test_installed_demo_task_trains_with_a_registered_recipe_of_its_modality(name):
    task = REGISTRY.demo_task(name)
    assert isinstance(task, DemoTask)
    assert REGISTRY.recipe(task.recipe).modality == task.modality
    for mode in DEMO_MODES:
        size = task.size(mode)
        stages = {s.name for s in REGISTRY.recipe(task.recipe).stages}
        assert set(size.steps) <= stages, f"{name} sizes steps of stages its recipe lacks"
