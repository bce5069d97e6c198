"""StagePlan: YAML loading, field-path errors, relative paths, presets and their overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from xmm.errors import ConfigError
from xmm.training.plan import load_plan
from xmm.training.presets import PRESETS, apply_preset, deep_merge


def _stage(**kw):
    return {"trainable": ["bridge:*"], "data": {"train": "d.jsonl"}, "max_steps": 3, **kw}


def _write(tmp_path: Path, data: dict, name: str = "plan.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_yaml_plan_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    sub = tmp_path / "plans"
    sub.mkdir()
    path = _write(sub, {"model": "model.yaml", "output_dir": "out", "cache_dir": "/abs/cache",
                        "stages": [_stage(objectives=["lm"])]})
    plan = load_plan(path)
    assert plan.output_path == sub.resolve() / "out"
    assert plan.cache_path == Path("/abs/cache")
    assert plan.resolve(plan.stages[0].data.train[0]) == sub.resolve() / "d.jsonl"
    assert plan.stages[0].name == "stage1"
    assert [o.name for o in plan.stages[0].objectives] == ["lm"]


def test_objective_forms_and_weights() -> None:
    plan = load_plan({"model": {}, "stages": [
        _stage(objectives={"lm": 0.5, "cif_quantity": {"weight": 2.0, "params": {}}}),
        _stage(name="b", objectives=[{"name": "qformer_itc", "weight": 1.5}, "qformer_itm"]),
    ]})
    assert [(o.name, o.weight) for o in plan.stages[0].objectives] == [("lm", 0.5), ("cif_quantity", 2.0)]
    assert [(o.name, o.weight) for o in plan.stages[1].objectives] == [("qformer_itc", 1.5), ("qformer_itm", 1.0)]


@pytest.mark.parametrize(
    ("stages", "field", "words"),
    [
        ([_stage(), _stage(name="two", trainable=["brige:image"])], "stages.1.trainable.0", "unknown component kind"),
        ([_stage(max_steps=None)], "stages.0", "exactly one of 'max_steps' and 'epochs'"),
        ([_stage(epochs=2)], "stages.0", "exactly one"),
        ([_stage(objectives=["lm", "nope"])], "stages.0.objectives.1.name", "unknown objective 'nope'"),
        ([_stage(objectives={"cif_tokens": {"params": {"metrc": "l2"}}})], "stages.0.objectives.0",
         "objective 'cif_tokens' takes no parameter ['metrc']"),
        ([_stage(objectives={"cif_tokens": {"params": {"metric": "cosine"}}})], "stages.0.objectives.0",
         "metric must be one of ['dot', 'l2'], got 'cosine'"),
        ([{"trainable": ["bridge:*"], "max_steps": 1}], "stages.0.data", "Field required"),
        ([_stage(batch_size=0)], "stages.0.batch_size", "greater than 0"),
        ([_stage(optimizer={"type": "lion"})], "stages.0.optimizer.type", "adamw"),
        ([_stage(name="a"), _stage(name="a")], "", "unique"),
        ([_stage(surprise=1)], "stages.0.surprise", "Extra inputs"),
    ],
)
def test_errors_name_the_field(tmp_path: Path, stages: list, field: str, words: str) -> None:
    path = _write(tmp_path, {"model": {}, "stages": stages})
    with pytest.raises(ConfigError) as e:
        load_plan(path)
    assert words in str(e.value)
    assert str(path) in str(e.value)
    if field:
        assert e.value.field == field


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("stages: [\n  - {a: 1\n")
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_plan(p)
    assert "broken.yaml" in str(e.value)


def test_model_config_errors_are_prefixed() -> None:
    plan = load_plan({"model": {"llm": "x", "dtype": "float8"}, "stages": [_stage()]})
    with pytest.raises(ConfigError) as e:
        plan.multimodal_config()
    assert e.value.field == "model.dtype"


def test_unknown_plugin_module_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot import plugin module 'no_such_module_xyz'") as e:
        load_plan({"model": {}, "plugins": ["no_such_module_xyz"], "stages": [_stage()]})
    assert e.value.field == "plugins.0"


@pytest.mark.parametrize("name", PRESETS)
def test_presets_validate_with_data(name: str) -> None:
    plan = load_plan({"preset": name, "model": {"modalities": {"image": {}}}, "defaults": {"data": {"train": "d.jsonl"}}})
    assert len(plan.stages) == {"xllm": 3, "chatbridge": 2, "nextgpt": 3}[name]
    assert all(s.data.train == ["d.jsonl"] for s in plan.stages)


def test_xllm_preset_schedule_and_overrides() -> None:
    plan = load_plan({
        "preset": "xllm",
        "model": {},
        "defaults": {"data": {"train": "captions.jsonl"}, "batch_size": 8},
        "stages": {"integrate": {"data": {"train": "instruct.jsonl"}, "max_steps": 7, "optimizer": {"lr": 1e-5}}},
    })
    convert, align, integrate = plan.stages
    assert [o.name for o in convert.objectives] == ["qformer_itc", "qformer_itm", "qformer_itg", "cif_quantity"]
    assert [o.name for o in align.objectives] == ["lm", "cif_quantity"]
    assert convert.trainable == ["bridge:*"] and integrate.trainable == ["bridge:*:proj?", "bridge:*:adapter?"]
    assert integrate.data.train == ["instruct.jsonl"] and integrate.max_steps == 7
    assert integrate.optimizer.lr == 1e-5 and integrate.optimizer.weight_decay == 0.05  # merged, not replaced
    assert all(s.batch_size == 8 for s in plan.stages)


def test_preset_stage_override_by_position_drop_and_unknown() -> None:
    plan = load_plan({"preset": "nextgpt", "model": {}, "defaults": {"data": {"train": "d.jsonl"}},
                      "stages": {"decoder_alignment": False}})
    assert [s.name for s in plan.stages] == ["encoder_alignment", "instruction_tuning"]
    assert plan.stages[1].lora is not None and plan.stages[1].lora.r == 32
    plan = load_plan({"preset": "chatbridge", "model": {}, "stages": [{"data": {"train": "a.jsonl"}, "max_steps": 2},
                                                                        {"data": {"train": "b.jsonl"}}]})
    assert plan.stages[0].max_steps == 2 and plan.stages[1].data.train == ["b.jsonl"]
    with pytest.raises(ConfigError, match="has no stage 'instruct'") as e:
        load_plan({"preset": "xllm", "model": {}, "stages": {"instruct": {"max_steps": 1}}})
    assert e.value.field == "stages.instruct"
    with pytest.raises(ConfigError, match="unknown preset"):
        load_plan({"preset": "llava", "model": {}})


def test_chatbridge_preset_shares_one_perceiver() -> None:
    data = apply_preset({"preset": "chatbridge", "model": {"modalities": {"image": {}, "audio": {}, "video": {"bridge": {"type": "mlp"}}}}},
                        base_dir=Path("."))
    model = data["model"]
    assert model["shared_bridges"] == {"perceiver": {"type": "perceiver"}}
    assert model["modalities"]["image"]["shared_bridge"] == "perceiver"
    assert model["modalities"]["audio"]["shared_bridge"] == "perceiver"
    assert "shared_bridge" not in model["modalities"]["video"]  # its own bridge is kept


def test_deep_merge_replaces_lists_and_objectives() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "objectives": {"lm": 1, "x": 2}}
    out = deep_merge(base, {"a": {"c": [3]}, "objectives": {"lm": 2}})
    assert out == {"a": {"b": 1, "c": [3]}, "objectives": {"lm": 2}}
    assert base["a"]["c"] == [1, 2]


def test_plan_round_trips_through_yaml(tmp_path: Path) -> None:
    plan = load_plan({"preset": "xllm", "model": {}, "defaults": {"data": {"train": "d.jsonl"}}})
    again = load_plan(yaml.safe_load(plan.to_yaml()))
    assert again.model_dump() == plan.model_dump()


@pytest.mark.parametrize("name", ["image_mlp", "xllm", "chatbridge", "nextgpt"])
def test_example_plans_validate(name: str) -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "plans"
    plan = load_plan(root / f"{name}.yaml")
    assert plan.stages and all(s.data.train for s in plan.stages)
    assert plan.output_path.is_relative_to(root.parents[1])
