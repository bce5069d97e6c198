"""Fixtures for the Hub tests: a tiny trained model and its checkpoint, a fake Hub at the ``HfApi`` boundary that
keeps what was uploaded, and a Hugging Face cache in the hub's own layout that loads offline."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import xmm_hubtest_plugin
from hubtest_support import EVAL, PLAN, build_model


@pytest.fixture
def hub_registry(make_registry: Any) -> Any:
    """xmm-core and the `smell` test plugin, the process-wide registry during the test."""
    return make_registry(xmm_hubtest_plugin.HubTestPlugin(), **xmm_hubtest_plugin.REGISTRATION)


@pytest.fixture(scope="session")
def tiny_llm_dir(make_tiny_llm: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """xmm.testing's tiny LLM over a 64-word tokenizer, 16 wide and 1 layer: the audit tests copy a frozen [16, 16]
    LLM tensor into a bridge and name the embedding matrix's shape (64, 16)."""
    words = tmp_path_factory.mktemp("word-tokenizer")
    xmm_hubtest_plugin.word_tokenizer().save_pretrained(words)
    return make_tiny_llm(words, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1)


@pytest.fixture
def trained_model(hub_registry: Any, tiny_llm_dir: Path) -> Any:
    return build_model(tiny_llm_dir)


@pytest.fixture
def checkpoint(trained_model: Any, tmp_path: Path) -> Path:
    """The model's checkpoint folder with the trainer's plan.yaml and eval.json beside the weights."""
    out = trained_model.save_pretrained(tmp_path / "ckpt")
    (out / "plan.yaml").write_text(PLAN)
    (out / "eval.json").write_text(json.dumps(EVAL))
    return out


# -- a fake Hub at the HfApi boundary ----------------------------------------------------------------------
@dataclass
class FakeHub:
    """Records HfApi calls (arguments and the Authorization header they would send) and keeps a copy of every uploaded folder."""

    root: Path
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    uploads: list[Path] = field(default_factory=list)
    fail_with: Exception | None = None

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def kwargs(self, name: str) -> dict[str, Any]:
        return next(kw for n, kw in self.calls if n == name)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    from huggingface_hub import CommitInfo, HfApi, RepoUrl
    from huggingface_hub.utils import build_hf_headers

    hub = FakeHub(tmp_path / "remote")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    # hermetic: no token from the environment or a login stored on this machine
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))

    def auth(api: HfApi) -> str | None:
        """The Authorization header the real request would carry."""
        return build_hf_headers(token=api.token).get("authorization")

    def create_repo(self: HfApi, repo_id: str, **kw: Any) -> RepoUrl:
        hub.calls.append(("create_repo", {"repo_id": repo_id, **kw, "auth": auth(self)}))
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self: HfApi, repo_id: str, **kw: Any) -> None:
        hub.calls.append(("create_branch", {"repo_id": repo_id, **kw, "auth": auth(self)}))

    def upload_folder(self: HfApi, **kw: Any) -> CommitInfo:
        hub.calls.append(("upload_folder", {**kw, "auth": auth(self)}))
        if hub.fail_with is not None:
            raise hub.fail_with
        # the staged folder is deleted after the call returns: keep what "the Hub" received
        kept = hub.root / f"upload-{len(hub.uploads)}"
        shutil.copytree(kw["folder_path"], kept)
        hub.uploads.append(kept)
        oid = hashlib.sha1(str(kept).encode()).hexdigest()
        return CommitInfo(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/{oid}",
                          commit_message=kw.get("commit_message") or "", commit_description="", oid=oid)

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_branch", create_branch)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return hub


# -- a Hugging Face cache in the hub's layout ------------------------------------------------------------
@pytest.fixture
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty hub cache that huggingface_hub uses (as HF_HUB_CACHE would set it at start-up)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 set after huggingface_hub was imported: xmm must read it at call time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
