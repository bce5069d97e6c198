"""``xmm push CHECKPOINT`` reads CHECKPOINT as ``xmm chat/eval/serve`` do (:mod:`xmm.resolver`): a run folder, its
``model/``, its ``xmm.json``, a training checkpoint and the ``checkpoints/`` folder each upload the model the resolver
names; what is not a local trained checkpoint is refused before any Hub call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hubtest_support import EVAL, PLAN, files_under
from xmm.cli.main import main
from xmm.resolver import resolve_checkpoint

STAGE = "stage-1-align"
BRIDGE = "bridges/smell/model.safetensors"


@pytest.fixture
def runs(trained_model, tmp_path: Path) -> Path:
    """``runs/done`` (final model + one stage checkpoint, different weights) and ``runs/killed`` (no final model)."""
    root = tmp_path / "runs"
    for name in ("done", "killed"):
        run = root / name
        stage = run / "checkpoints" / STAGE
        trained_model.save_pretrained(stage / "model")
        (stage / "model" / "eval.json").write_text(json.dumps(EVAL))
        (stage / "trainer_state.json").write_text("{}")
        (run / "checkpoints" / "latest").write_text(f"{STAGE}\n")
        (run / "plan.yaml").write_text(PLAN)
    with torch.no_grad():  # the final model differs from the stage checkpoint, so the test sees which one went up
        for p in trained_model.bridges.parameters():
            p.mul_(2.0)
    trained_model.save_pretrained(root / "done" / "model")
    return root


def _push(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as done:
        main(["push", *argv])
    return int(done.value.code or 0)


@pytest.mark.parametrize(("target", "expected"), [
    ("done", "done/model"),
    ("done/model", "done/model"),
    ("done/model/xmm.json", "done/model"),
    (f"done/checkpoints/{STAGE}", f"done/checkpoints/{STAGE}/model"),
    ("done/checkpoints", f"done/checkpoints/{STAGE}/model"),
    ("killed", f"killed/checkpoints/{STAGE}/model"),
])
def test_push_uploads_the_model_the_resolver_names(runs, fake_hub, tmp_path, capsys, target, expected):
    model_dir = runs / expected
    assert resolve_checkpoint(runs / target).path == model_dir  # what chat/eval/serve would load
    out = tmp_path / "staged"
    assert _push([str(runs / target), "me/smell-lm", "--dry-run", "--out", str(out)]) == 0
    assert fake_hub.calls == []
    staged = files_under(out)
    assert set(files_under(model_dir)) <= set(staged)
    assert {"README.md", "plan.yaml", "eval.json"} <= set(staged)
    assert not any(name.endswith(("trainer_state.json", "latest")) for name in staged)
    assert (out / BRIDGE).read_bytes() == (model_dir / BRIDGE).read_bytes()
    err = capsys.readouterr().err
    assert ("no final model yet" in err) == (target == "killed")  # the resolver's warning reaches the user


def test_push_of_a_run_folder_uploads_its_final_model(runs, fake_hub):
    assert _push([str(runs / "done"), "me/smell-lm"]) == 0
    assert fake_hub.names()[-1] == "upload_folder"
    uploaded = fake_hub.uploads[-1]
    assert (uploaded / BRIDGE).read_bytes() == (runs / "done" / "model" / BRIDGE).read_bytes()
    assert (uploaded / BRIDGE).read_bytes() != (runs / "done" / "checkpoints" / STAGE / "model" / BRIDGE).read_bytes()


def test_push_refuses_what_is_not_a_local_trained_checkpoint(runs, fake_hub, tiny_llm_dir, tmp_path, capsys,
                                                             monkeypatch):
    config = tmp_path / "model.yaml"
    config.write_text(f"llm: {tiny_llm_dir}\nmodalities:\n  smell: {{}}\n")
    outside = runs / "outside"
    outside.mkdir()
    (runs / "tampered" / "checkpoints").mkdir(parents=True)
    (runs / "tampered" / "checkpoints" / "latest").write_text("../../outside\n")
    monkeypatch.chdir(tmp_path)
    for target, message in [
        (str(config), "is a config file, not a trained checkpoint; xmm push needs a model folder"),
        ("me/not-here", "me/not-here: no such file or folder"),  # a Hub-like id: push uploads local files only
        (str(runs / "missing"), "no such file or folder"),
        (str(runs / "outside"), "is a folder but not a checkpoint"),
        (str(runs / "done" / "plan.yaml"), "is a config file, not a trained checkpoint"),
        (str(runs / "done" / "checkpoints" / "latest"), "is a file but not a checkpoint folder"),
        (str(runs / "tampered"), "which is not a checkpoint folder inside"),
    ]:
        assert _push([target, "me/smell-lm", "--dry-run"]) == 1, target
        assert message in capsys.readouterr().err, target
    assert fake_hub.calls == []
