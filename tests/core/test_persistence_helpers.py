"""Leaf helpers: atomic folder publishing (xmm.io), tensor digests and the deprecated persistence aliases
(xmm.persist), and the local-or-Hub lookup that stays offline unless asked (xmm.pretrained)."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch
from xmm import pretrained
from xmm.errors import CheckpointError, MissingDependencyError, ModelNotFoundError
from xmm.io import atomic_dir, publish_dir
from xmm.persist import tensor_digest


def _write(folder: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- atomic folder publishing ------------------------------------------------------------------------------------
def test_atomic_dir_publishes_a_new_folder_and_leaves_no_staging(tmp_path):
    with atomic_dir(tmp_path / "out") as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".out.") and not any(staging.iterdir())
        _write(staging, {"a.txt": "1", "sub/b.txt": "2"})
        assert not (tmp_path / "out").exists()  # nothing is visible before the end
    assert _tree(tmp_path / "out") == {"a.txt": "1", "sub/b.txt": "2"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_mid_write_leaves_the_old_folder_intact(tmp_path):
    target = tmp_path / "out"
    _write(target, {"model.bin": "old", "keep/me.txt": "x"})
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(target) as staging:
        _write(staging, {"model.bin": "half"})
        raise RuntimeError("disk full")
    assert _tree(target) == {"model.bin": "old", "keep/me.txt": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_replace_swaps_the_folder_and_keeps_only_the_foreign_entries_asked_for(tmp_path):
    target = tmp_path / "ckpt"
    _write(target, {"xmm.json": "old", "bridges/x/w": "old", "plan.yaml": "plan", "README.md": "card", "eval.json": "e"})
    managed = {"xmm.json", "bridges"}
    with atomic_dir(target, keep=lambda name: name not in managed and name != "README.md") as staging:
        _write(staging, {"xmm.json": "new", "eval.json": "new eval"})
    # managed entries come from the new folder only (bridges/ is gone), foreign ones survive, the new one wins a clash
    assert _tree(target) == {"xmm.json": "new", "plan.yaml": "plan", "eval.json": "new eval"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_keep_mode_lets_the_first_finished_copy_win(tmp_path):
    target = tmp_path / "converted"
    with atomic_dir(target, if_exists="keep") as mine:
        _write(mine, {"weights": "mine"})
        _write(target, {"weights": "theirs"})  # another process finished the same conversion meanwhile
    assert _tree(target) == {"weights": "theirs"}
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]


def test_publish_dir_refuses_a_staging_folder_elsewhere_and_a_file_target(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "staging").mkdir()
    with pytest.raises(ValueError, match="must be in the folder of"):
        publish_dir(tmp_path / "a" / "staging", tmp_path / "b" / "target")
    (tmp_path / "a" / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        publish_dir(tmp_path / "a" / "staging", tmp_path / "a" / "file")
    assert (tmp_path / "a" / "file").read_text() == "x"


# -- tensor digests ---------------------------------------------------------------------------------------------
def test_tensor_digest_sees_names_dtypes_shapes_and_bits():
    a = torch.arange(6, dtype=torch.float32)
    base = tensor_digest({"w": a})
    assert tensor_digest({"w": a.clone()}) == base
    assert tensor_digest([("w", a)]) == base  # (name, tensor) pairs == a mapping
    changed = [
        {"v": a},  # name
        {"w": a.double()},  # dtype
        {"w": a.reshape(2, 3)},  # shape
        {"w": a + torch.tensor([0, 0, 0, 0, 0, 1e-6])},  # one value, by one ulp-ish step
        {"w": a, "b": torch.zeros(0)},  # an extra empty tensor
    ]
    assert len({base, *(tensor_digest(c) for c in changed)}) == len(changed) + 1
    assert tensor_digest([a]) == tensor_digest({"0": a})  # plain tensors are named by position
    x = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    assert tensor_digest([x]) != tensor_digest([x.float()])


def test_tensor_digest_of_a_module_is_its_state_dict_and_follows_training():
    lin = torch.nn.Linear(3, 2)
    assert tensor_digest(lin) == tensor_digest(lin.state_dict())
    before = tensor_digest(lin)
    with torch.no_grad():
        lin.bias.add_(1.0)
    assert tensor_digest(lin) != before


# -- deprecated aliases of the persistence helpers ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["CONFIG_NAME", "WEIGHTS_NAME", "load_state_strict", "load_weights_dir",
                                  "read_config_json", "save_module_dir", "validate_config"])
def test_old_bridges_base_names_warn_and_are_the_persist_ones(name):
    import xmm.persist as persist
    from xmm.bridges import base

    with pytest.warns(DeprecationWarning, match=f"xmm.bridges.base.{name} moved to xmm.persist"):
        assert getattr(base, name) is getattr(persist, name)
    with pytest.raises(AttributeError):
        base.not_a_name  # noqa: B018


def test_importing_persist_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = "import sys, xmm.persist, xmm.pretrained, xmm.io, xmm.errors; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


# -- pretrained: local folder or Hub repo id, offline unless asked -------------------------------------------------
@pytest.fixture
def empty_hf_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def no_network(monkeypatch):
    """Any Hub API call fails the test (snapshot_download asks repo_info first when it may download)."""
    from huggingface_hub import HfApi

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    for name in ("repo_info", "model_info", "list_repo_tree", "list_repo_files", "get_paths_info"):
        monkeypatch.setattr(HfApi, name, refuse)


@pytest.mark.parametrize(("text", "repo"), [("gpt2", True), ("owner/name", True), ("owner/name.v2", True),
                                            ("./owner/name", False), ("/abs/path", False), ("~/x", False),
                                            ("a/b/c", False), ("owner/na--me", False), ("x.git", False), ("", False)])
def test_is_repo_id(text, repo):
    assert pretrained.is_repo_id(text) is repo


def test_looks_local_when_the_namespace_is_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not pretrained.looks_local("runs/model")
    (tmp_path / "runs").mkdir()
    assert pretrained.looks_local("runs/model")  # a typo under a local folder is not a Hub lookup


def test_resolve_a_local_folder_with_subfolder_and_required_file(tmp_path):
    _write(tmp_path / "ckpt", {"bridges/image/config.json": "{}"})
    assert pretrained.resolve(tmp_path / "ckpt") == tmp_path / "ckpt"
    assert pretrained.resolve(tmp_path / "ckpt", subfolder="bridges/image/", must_contain="config.json") == \
        tmp_path / "ckpt" / "bridges" / "image"
    with pytest.raises(CheckpointError, match=r"folders that hold one: \['bridges/image'\] \(pass subfolder=\)"):
        pretrained.resolve(tmp_path / "ckpt", must_contain="config.json", what="bridge")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        pretrained.resolve(tmp_path / "ckpt" / "bridges" / "image" / "config.json")


@pytest.mark.parametrize("download", [False, True])
def test_a_missing_local_path_never_reaches_the_hub(tmp_path, empty_hf_cache, no_network, download):
    for text in (str(tmp_path / "nope"), "./nope/model", "~/definitely-not-here-xmm/x"):
        start = time.monotonic()
        with pytest.raises(ModelNotFoundError, match="no such model folder"):
            pretrained.resolve(text, download=download)
        assert time.monotonic() - start < 1.0


def test_a_repo_id_not_in_the_cache_fails_fast_without_download(empty_hf_cache, no_network):
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match=r"'org/llm' is not in the Hugging Face cache .*does not download it "
                                                 r"unasked.*hf download org/llm"):
        pretrained.resolve("org/llm")
    assert time.monotonic() - start < 2.0


def test_hf_hub_offline_read_at_call_time_wins_over_download(empty_hf_cache, no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pretrained.hub_offline()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        pretrained.resolve("org/llm", revision="v2", download=True)


def test_a_cached_snapshot_resolves_offline_with_its_commit(empty_hf_cache, no_network):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = empty_hf_cache / "models--org--llm"
    _write(repo / "snapshots" / commit, {"config.json": "{}", "sub/config.json": "{}"})
    _write(repo / "refs", {"main": commit})
    folder = pretrained.resolve("org/llm", must_contain="config.json")
    assert folder == repo / "snapshots" / commit
    assert pretrained.snapshot_commit(folder) == commit
    assert pretrained.snapshot_commit(folder / "sub") == commit
    assert pretrained.snapshot_commit(empty_hf_cache) is None


def test_import_optional_names_the_extra():
    from xmm.errors import import_optional

    assert import_optional("json", extra="none", purpose="x").dumps([1]) == "[1]"
    with pytest.raises(MissingDependencyError, match=r"'xmm_no_such_module' is not installed \(needed for a plot\)\. "
                                                     r"Install it with: pip install 'xmm-core\[plot\]'"):
        import_optional("xmm_no_such_module", extra="plot", purpose="a plot")


def test_no_warning_from_the_new_import_paths():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        from xmm.persist import CONFIG_NAME, validate_config  # noqa: F401
        from xmm.registry import create_projector, load_bridge, load_projector  # noqa: F401
