"""`xmm init plan`: the image plugin's recipe over a small synthetic set with the tiny LLM, timed here; sizing to a
budget; objectives that do not apply to another bridge left out; general data made by the LLM itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner
from xmm.cli.main import app
from xmm.errors import ConfigError
from xmm.training.general_data import general_count, general_prompts, media_parts, write_general_manifest
from xmm.training.recipe_plan import find_recipe, init_plan
from xmm.training.sizing import PlanTiming, StageTiming, fit_steps


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xmm_plugin_image import synthetic

    root = tmp_path_factory.mktemp("shapes")
    synthetic.make_shapes_dataset(root, 6, 1, questions_per_image=2, split_name="train")
    return root


def test_recipe_lookup_errors_name_what_is_installed() -> None:
    assert find_recipe("image").modality == "image"
    with pytest.raises(ConfigError, match="no modality 'smell'"):
        find_recipe("smell")
    with pytest.raises(ConfigError, match="trains image, not device"):
        find_recipe("device", "image")


def test_init_plan_times_the_stages_and_writes_the_recipe(shapes: Path, tmp_path: Path, tiny_llm_dir: Path) -> None:
    said: list[str] = []
    out = tmp_path / "plans" / "mine.yaml"
    report = init_plan("image", [shapes / "train.jsonl"], output=out, llm=str(tiny_llm_dir), time_steps=1,
                       progress=False, say=said.append)
    plan = yaml.safe_load(out.read_text())
    assert [s["name"] for s in plan["stages"]] == ["convert", "align"]  # the joint stage needs several modalities
    assert plan["model"]["modalities"]["image"]["bridge"]["type"] == "guided-mlp"
    # paths relative to the plan's folder
    assert (out.parent / plan["stages"][0]["data"]["train"][0]).resolve() == (shapes / "train.jsonl").resolve()
    # 12 examples: the recipe's batches of 64 and 16 are cut to them, and it says so
    assert [s["batch_size"] for s in plan["stages"]] == [12, 12]
    assert any("batch size of convert, align cut to the 12 examples" in line for line in said)
    assert report.steps == report.recipe_steps == {"convert": 1000, "align": 150}  # no budget: the recipe's steps
    assert set(report.timing.stages) == {"convert", "align"} and all(
        t.s_per_step > 0 for t in report.timing.stages.values())
    assert any(line.startswith("measured:") and "convert: " in line and " s/step" in line for line in said)
    assert out.read_text().startswith("# Written by `xmm init plan`") and "s/step" in out.read_text().splitlines()[1]
    with pytest.raises(ConfigError, match="exists"):
        init_plan("image", [shapes / "train.jsonl"], output=out, llm=str(tiny_llm_dir), measure=False, say=said.append)


def test_a_bridge_without_guided_tokens_drops_the_convert_stage(shapes: Path, tmp_path: Path,
                                                               tiny_llm_dir: Path) -> None:
    said: list[str] = []
    init_plan("image", [shapes / "train.jsonl"], output=tmp_path / "p.yaml", llm=str(tiny_llm_dir), bridge="mlp",
              time_steps=1, progress=False, say=said.append)
    plan = yaml.safe_load((tmp_path / "p.yaml").read_text())
    assert [s["name"] for s in plan["stages"]] == ["align"]  # guided_answer gives no loss through an mlp bridge
    assert plan["model"]["modalities"]["image"]["bridge"] == {"type": "mlp"}
    assert any("stage 'convert' left out: none of its objectives (guided_answer) applies" in line for line in said)


def test_cli_without_measuring_keeps_the_recipe_steps(shapes: Path, tmp_path: Path, tiny_llm_dir: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMM_LLM", str(tiny_llm_dir))
    out = tmp_path / "p.yaml"
    res = CliRunner().invoke(app, ["init", "plan", "--modality", "image", "--data", str(shapes / "train.jsonl"),
                                   "--output", str(out), "--no-measure"])
    assert res.exit_code == 0, res.output
    assert "steps: convert 1000, align 150 (the recipe's; not measured" in res.output
    plan = yaml.safe_load(out.read_text())
    assert plan["model"]["llm"] == str(tiny_llm_dir) and [s["max_steps"] for s in plan["stages"]] == [1000, 150]
    assert plan["stages"][0]["schedule"]["warmup_steps"] == 50  # the recipe's warm-up ratio of its steps


def test_fit_steps_scales_training_and_counts_encoding_once() -> None:
    timing = PlanTiming({"a": StageTiming("a", 0.5, 3.0, 100, 10, 10, ("lm",)),
                         "b": StageTiming("b", 2.0, 3.0, 100, 10, 0, ("lm",))}, encode_s_per_item=0.1)
    steps = {"a": 100, "b": 50}
    assert timing.encode_seconds(steps) == pytest.approx(10.0)  # 100 examples, each encoded once
    assert fit_steps(steps, timing, 200.0) == (steps, 1.0)  # 50 + 100 + 10 s fit
    fitted, factor = fit_steps(steps, timing, 85.0)
    assert factor == pytest.approx(0.5) and fitted == {"a": 50, "b": 25}
    with pytest.raises(ValueError, match="encoding the data alone"):
        fit_steps(steps, timing, 5.0)


def test_general_data_is_self_distilled_and_mixed_at_the_share_asked(tmp_path: Path, shapes: Path) -> None:
    prompts = general_prompts(50, seed=1)
    assert len(set(prompts)) == 50 and prompts == general_prompts(50, seed=1)
    assert general_count(0.2, 100, max_unique=240) == (25, 1)
    assert general_count(0.5, 1000, max_unique=240) == (240, 4)
    media = media_parts(shapes / "train.jsonl", limit=3)
    assert len(media) == 3 and all(m["type"] == "image" and m["path"].startswith("images/") for m in media)
    path = write_general_manifest(shapes / "general.jsonl", prompts[:4], ["Paris.", "", "Hola.", "Seven."],
                                  media=media, with_media=1.0, copies=2)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 6  # the empty answer is left out, the others twice
    assert all(r["meta"]["task"] == "general" and r["messages"][0]["content"][0]["type"] == "image" for r in rows)
    with pytest.raises(ValueError, match="between 0 and 1"):
        general_count(1.0, 10, max_unique=5)
