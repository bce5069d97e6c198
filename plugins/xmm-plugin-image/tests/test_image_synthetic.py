"""The synthetic shapes dataset: files, manifests in the trainer's format, unambiguous questions, honest pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from xmm.errors import ConfigError
from xmm_plugin_image.loading import load_image
from xmm_plugin_image.synthetic import COLOURS, POSITIONS, SHAPES, main, make_shapes_dataset

FORMS = {
    "colour": (re.compile(r"^What colour is the (circle|square|triangle)\?$"), set(COLOURS)),
    "shape": (re.compile(r"^What shape is the (red|green|blue|yellow) one\?$"), set(SHAPES)),
    "position": (re.compile(r"^Where is the (red|green|blue|yellow) (circle|square|triangle)\?$"), set(POSITIONS)),
    "count": (re.compile(r"^How many shapes are there\?$"), {"one", "two", "three"}),
}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    manifest = make_shapes_dataset(out, 30, seed=3, questions_per_image=3, split_name="train")
    return out, manifest


def test_files_and_manifest_format(dataset):
    out, manifest = dataset
    assert manifest == out / "train.jsonl"
    assert len(list((out / "images").glob("train_*.png"))) == 30
    rows = _read(manifest)
    assert 30 <= len(rows) <= 90
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert [p["type"] for p in user["content"]] == ["image", "text"]
        img = load_image(manifest.parent / user["content"][0]["path"])
        assert img.size == (224, 224)
        task = row["meta"]["task"]
        form, answers = FORMS[task]
        assert form.match(user["content"][1]["text"]), user["content"][1]["text"]
        answer = assistant["content"][0]["text"]
        assert answer in answers and answer == answer.lower() and " " not in answer
    assert {r["meta"]["task"] for r in rows} == set(FORMS)


def test_answers_follow_from_the_scene_and_are_unambiguous(dataset):
    _, manifest = dataset
    for row in _read(manifest):
        scene = row["meta"]["scene"]
        question = row["messages"][0]["content"][1]["text"]
        answer = row["messages"][1]["content"][0]["text"]
        assert len({(s["colour"], s["kind"]) for s in scene}) == len(scene)
        assert len({s["position"] for s in scene}) == len(scene)
        task = row["meta"]["task"]
        if task == "colour":
            kind = FORMS["colour"][0].match(question).group(1)
            matches = [s for s in scene if s["kind"] == kind]
            assert len(matches) == 1 and matches[0]["colour"] == answer
        elif task == "shape":
            colour = FORMS["shape"][0].match(question).group(1)
            matches = [s for s in scene if s["colour"] == colour]
            assert len(matches) == 1 and matches[0]["kind"] == answer
        elif task == "position":
            colour, kind = FORMS["position"][0].match(question).groups()
            assert [s["position"] for s in scene if (s["colour"], s["kind"]) == (colour, kind)] == [answer]
        else:
            assert answer == ["one", "two", "three"][len(scene) - 1]


def test_pixels_show_the_described_shapes(dataset):
    out, manifest = dataset
    for row in _read(manifest)[:20]:
        img = np.asarray(load_image(out / row["messages"][0]["content"][0]["path"]), dtype=np.int32)
        for s in row["meta"]["scene"]:
            # the anchor point lies inside every shape kind (for triangles too: apex above, base below)
            assert np.abs(img[s["y"], s["x"]] - np.array(COLOURS[s["colour"]])).max() <= 3


def test_captions(dataset):
    out, _ = dataset
    rows = _read(out / "train_captions.jsonl")
    assert len(rows) == 30
    for row in rows:
        assert [p["type"] for p in row["messages"][0]["content"]] == ["image"]
        caption = row["messages"][1]["content"][0]["text"]
        assert re.fullmatch(r"a (red|green|blue|yellow) (circle|square|triangle) (on|at|in) the \w+"
                            r"((, | and )a \w+ \w+ (on|at|in) the \w+)*", caption), caption
        assert row["meta"]["task"] == "caption"


def test_seeds_and_splits(tmp_path, dataset):
    _, manifest = dataset
    again = make_shapes_dataset(tmp_path / "a", 30, seed=3, questions_per_image=3)
    assert again.read_text() == manifest.read_text()
    assert (tmp_path / "a/images/train_00007.png").read_bytes() == (manifest.parent / "images/train_00007.png").read_bytes()
    test = make_shapes_dataset(tmp_path / "a", 10, seed=4, split_name="test")
    assert test.name == "test.jsonl" and (tmp_path / "a/images/test_00000.png").exists()
    train_scenes = {json.dumps(r["meta"]["scene"]) for r in _read(again)}
    assert not any(json.dumps(r["meta"]["scene"]) in train_scenes for r in _read(test))


def test_cli_and_argument_errors(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--n", "4", "--seed", "9", "--split", "val"]) == 0
    assert (tmp_path / "cli/val.jsonl").exists() and (tmp_path / "cli/val_captions.jsonl").exists()
    assert "val.jsonl" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="n_images"):
        make_shapes_dataset(tmp_path, 0, seed=1)
    with pytest.raises(ConfigError, match="split_name"):
        make_shapes_dataset(tmp_path, 1, seed=1, split_name="../x")
