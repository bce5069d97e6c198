"""xmm.resolver: every way of naming a checkpoint means the same model, and every wrong one is a typed error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from xmm.errors import CheckpointError, ConfigError
from xmm.resolver import EXPECTED, resolve_checkpoint
from xmm_serve_testkit import build_model, tiny_registry


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_llm_dir: Path) -> Path:
    """runs/r as training leaves it: model/, plan.yaml, checkpoints/<step>/{model, trainer_state.json}, latest."""
    run = tmp_path_factory.mktemp("runs") / "r"
    model = build_model(tiny_llm_dir)
    with torch.no_grad():
        for p in model.bridges.parameters():
            p.add_(0.5)  # "trained": differs from a fresh build
    model.save_pretrained(run / "model")
    (run / "plan.yaml").write_text("plugins: [xmm_serve_test_plugin]\nmodel: {}\nstages: []\n")
    step = run / "checkpoints" / "step-00000002"
    model.save_pretrained(step / "model")
    (step / "trainer_state.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step-00000002\n")
    return run


def test_each_name_of_a_trained_model(run_dir: Path):
    cases = {
        str(run_dir): ("run", run_dir / "model"),
        str(run_dir / "model"): ("model", run_dir / "model"),
        str(run_dir / "model" / "xmm.json"): ("model", run_dir / "model"),
        str(run_dir / "checkpoints" / "step-00000002"): ("stage", run_dir / "checkpoints" / "step-00000002" / "model"),
        str(run_dir / "checkpoints"): ("stage", run_dir / "checkpoints" / "step-00000002" / "model"),
    }
    for target, (kind, path) in cases.items():
        r = resolve_checkpoint(target)
        assert (r.kind, r.path) == (kind, path), target
        assert r.plugins == ("xmm_serve_test_plugin",) and r.trained and not r.warnings, target


def test_all_names_load_the_same_weights(run_dir: Path, tiny_llm_dir: Path):
    def weights(target: str) -> list[torch.Tensor]:
        model = resolve_checkpoint(target).load(registry=tiny_registry())
        return [p.detach().clone() for p in model.bridges.parameters()]

    reference = weights(str(run_dir / "model"))
    for target in (str(run_dir), str(run_dir / "checkpoints" / "step-00000002"), str(run_dir / "checkpoints")):
        assert all(torch.equal(a, b) for a, b in zip(weights(target), reference)), target
    fresh = [p for p in build_model(tiny_llm_dir).bridges.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(fresh, reference))


def test_unfinished_run_uses_its_latest_checkpoint_with_a_warning(run_dir: Path, tmp_path: Path):
    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(run_dir / "checkpoints" / "step-00000002", run / "checkpoints" / "step-00000002")
    (run / "checkpoints" / "latest").write_text("step-00000002")
    r = resolve_checkpoint(run)
    assert r.kind == "run" and r.path == run / "checkpoints" / "step-00000002" / "model"
    assert "no final model" in r.warnings[0] and "step-00000002" in r.warnings[0]


@pytest.mark.parametrize("latest", ["../../r", "/etc", "", "..", "missing"])
def test_a_tampered_latest_does_not_lead_out(run_dir: Path, tmp_path: Path, latest: str):
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (root / "latest").write_text(latest)
    with pytest.raises(CheckpointError, match="latest"):
        resolve_checkpoint(tmp_path / "run")


def test_a_symlinked_checkpoint_pointing_elsewhere_is_refused(run_dir: Path, tmp_path: Path):
    root = tmp_path / "run" / "checkpoints"
    root.mkdir(parents=True)
    (root / "escape").symlink_to(run_dir)  # a folder outside this run's checkpoints/
    (root / "latest").write_text("escape")
    with pytest.raises(CheckpointError, match="not a checkpoint folder inside"):
        resolve_checkpoint(tmp_path / "run")


def test_configs_and_plans_are_untrained_models(tmp_path: Path, tiny_llm_dir: Path):
    cfg = tmp_path / "model.yaml"
    cfg.write_text(f"llm: {tiny_llm_dir}\nmodalities: {{image: {{}}}}\nautocast: 'off'\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("plugins: [xmm_serve_test_plugin]\nmodel: model.yaml\nstages: []\n")
    inline = tmp_path / "inline.yml"
    inline.write_text(f"model: {{llm: {tiny_llm_dir}, modalities: {{device: {{}}}}}}\nstages: []\n")
    for target, modalities, plugins in ((cfg, ["image"], ()), (plan, ["image"], ("xmm_serve_test_plugin",)),
                                        (inline, ["device"], ())):
        r = resolve_checkpoint(target)
        assert r.kind == "config" and not r.trained and r.plugins == plugins
        assert list(r.config.modalities) == modalities
        assert "untrained" in r.warnings[0]
    said: list[str] = []
    model = resolve_checkpoint(cfg).load(registry=tiny_registry(), on_warning=said.append)
    assert list(model.specs) == ["image"] and said and "untrained" in said[0]


@pytest.mark.parametrize("text,error,words", [
    ("llm: [unclosed", ConfigError, "not valid YAML"),
    ("- a\n- b\n", ConfigError, "not a mapping"),
    ("modalities: {image: {bridge: 3}}\n", ConfigError, "modalities"),
    ("model: 5\nstages: []\n", ConfigError, "model"),
    ("model: nowhere.yaml\nstages: []\n", ConfigError, "nowhere.yaml"),
    ("plugins: os\nmodel: {}\nstages: []\n", ConfigError, "plugins"),
])
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, error: type, words: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(error, match=words) as e:
        resolve_checkpoint(path)
    assert str(path) in str(e.value)


def test_wrong_local_targets_are_errors_without_the_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import xmm.hub

    def no_network(*a: Any, **k: Any) -> None:
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(xmm.hub, "snapshot_checkpoint", no_network, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("hi")
    os.mkfifo(tmp_path / "pipe.yaml")
    cases = {
        "./nope": "no such file or folder",
        str(tmp_path / "nope" / "deeper"): "neither is its folder",
        "nope": "no such file or folder",
        "runs/nope": "no such file or folder",  # runs/ is a folder here: a path, not a repo id
        "typo.yaml": "no such file or folder",
        "empty": "it is empty",
        "junk": "it holds weights.bin",
        "notes.txt": "not a model config",
        "pipe.yaml": "FIFO",
        "": "no checkpoint given",
    }
    for target, words in cases.items():
        with pytest.raises(CheckpointError) as e:
            resolve_checkpoint(target)
        assert words in str(e.value), (target, str(e.value))
        if target:
            assert target in str(e.value) and EXPECTED in str(e.value)


def test_a_repo_id_is_a_hub_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    r = resolve_checkpoint("someone/xmm-smollm2-image", revision="v1")
    assert (r.kind, r.repo_id, r.revision, r.path) == ("hub", "someone/xmm-smollm2-image", "v1", None)
    assert r.location == "someone/xmm-smollm2-image"
