"""Pulling: loading by repo id from a Hugging Face cache in the hub's own layout, offline, with revision pins checked.

The cache is populated from what the push handed to ``HfApi.upload_folder``, so these tests cover the round trip
push -> Hub -> cache -> ``from_pretrained`` except the transfer itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hubtest_support import build_model, files_under, populate_cache
from huggingface_hub import HfApi, ModelCard, scan_cache_dir
from xmm import MultimodalLM, hub
from xmm.bridges import Bridge
from xmm.errors import CheckpointError, IncompatibleCheckpointError, ModelNotFoundError
from xmm.registry import load_bridge

REPO = "me/smell-lm"


@pytest.fixture
def no_network(monkeypatch):
    """Any Hub API call fails the test: loading from the cache must not ask the Hub anything."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was contacted")

    for name in ("repo_info", "model_info", "list_repo_tree", "list_repo_files", "get_paths_info"):
        monkeypatch.setattr(HfApi, name, refuse)


@pytest.fixture
def pushed(trained_model, fake_hub) -> Path:
    """What the Hub received from ``hub.push_model`` (the folder that was uploaded)."""
    hub.push_model(trained_model, REPO)
    return fake_hub.uploads[-1]


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cache_layout_is_what_huggingface_hub_expects(pushed, hf_cache):
    commit = populate_cache(hf_cache, REPO, pushed)
    info = scan_cache_dir(hf_cache)
    assert info.warnings == []
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type) == (REPO, "model")
    (rev,) = repo.revisions
    assert rev.commit_hash == commit and rev.refs == frozenset({"main"})
    assert sorted(Path(f.file_path).relative_to(rev.snapshot_path).as_posix() for f in rev.files) == files_under(pushed)


def test_from_pretrained_by_repo_id_offline(trained_model, pushed, hf_cache, offline, no_network):
    populate_cache(hf_cache, REPO, pushed)
    loaded = MultimodalLM.from_pretrained(REPO)
    assert loaded.checkpoint_dir.is_relative_to(hf_cache)
    assert _same_state(loaded.bridges["smell"], trained_model.bridges["smell"])
    assert loaded.lora_parameters().keys() == trained_model.lora_parameters().keys()
    assert all(torch.equal(v, trained_model.lora_parameters()[k]) for k, v in loaded.lora_parameters().items())
    assert [t.text for t in loaded.new_tokens.tokens] == ["<smell>"]
    # the same media through the loaded model gives the same LLM inputs
    item = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.4, 0.9]])
    feats = trained_model.encoders["smell"].encode([item])
    a = trained_model.bridges["smell"](feats.features, feats.mask).embeds
    b = loaded.bridges["smell"](loaded.encoders["smell"].encode([item]).features, feats.mask).embeds
    assert torch.equal(a, b)


def test_revision_selects_the_branch_or_commit(tiny_llm_dir, trained_model, pushed, hf_cache, offline, no_network,
                                              tmp_path):
    v1 = populate_cache(hf_cache, REPO, pushed, ref="v1")
    newer = build_model(tiny_llm_dir)
    with torch.no_grad():
        for p in newer.bridges.parameters():
            p.add_(1.0)
    newer.save_pretrained(tmp_path / "newer")
    populate_cache(hf_cache, REPO, tmp_path / "newer", ref="main")
    assert not _same_state(MultimodalLM.from_pretrained(REPO).bridges["smell"], trained_model.bridges["smell"])
    for revision in ("v1", v1):
        loaded = MultimodalLM.from_pretrained(REPO, revision=revision)
        assert _same_state(loaded.bridges["smell"], trained_model.bridges["smell"])


def test_pinned_encoder_revision_is_checked(pushed, hf_cache, offline, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(pushed, tampered)
    manifest = json.loads((tampered / "xmm.json").read_text())
    manifest["modalities"]["smell"]["encoder"]["revision"] = "r0"
    (tampered / "xmm.json").write_text(json.dumps(manifest))
    populate_cache(hf_cache, REPO, tampered)
    with pytest.raises(IncompatibleCheckpointError, match="encoder test/smell-encoder revision r0.*revision r1"):
        MultimodalLM.from_pretrained(REPO)


def test_a_cached_file_linking_out_of_its_repo_folder_is_refused(pushed, hf_cache, offline, no_network, tmp_path):
    """Snapshot files are links into the repo's blobs/; a link anywhere else is refused, never followed."""
    commit = populate_cache(hf_cache, REPO, pushed)
    outside = tmp_path / "elsewhere.safetensors"
    outside.write_bytes((pushed / "new_tokens.safetensors").read_bytes())
    link = hf_cache / "models--me--smell-lm" / "snapshots" / commit / "new_tokens.safetensors"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(CheckpointError, match="field 'tokens'.*outside the checkpoint folder"):
        MultimodalLM.from_pretrained(REPO)


def test_pinned_llm_embedding_fingerprint_is_checked(pushed, hf_cache, offline, tiny_llm_dir):
    from xmm.llm import load_llm

    populate_cache(hf_cache, REPO, pushed)
    other = load_llm(str(tiny_llm_dir))
    with torch.no_grad():
        other.model.get_input_embeddings().weight.mul_(2.0)  # another LLM: same architecture, other weights
    with pytest.raises(IncompatibleCheckpointError, match="trained on LLM 'tiny-org/tiny-llama' \\(revision abc123"):
        MultimodalLM.from_pretrained(REPO, llm=other)


def test_not_cached_offline_says_how_to_get_it(hf_cache, offline, no_network):
    with pytest.raises(ModelNotFoundError, match=r"not in the Hugging Face cache .*HF_HUB_OFFLINE is set.*hf download"):
        hub.snapshot_checkpoint("me/never-downloaded")
    with pytest.raises(ModelNotFoundError, match="revision 'v9'"):
        hub.snapshot_checkpoint("me/never-downloaded", revision="v9")


def test_a_local_checkpoint_naming_an_uncached_hub_llm_fails_fast_offline(checkpoint, hf_cache, no_network,
                                                                           monkeypatch):
    """No HF_HUB_OFFLINE and no network: the LLM a local checkpoint names is looked up in the cache only (issue 17)."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    manifest = json.loads((checkpoint / "xmm.json").read_text())
    manifest["llm"]["name"] = manifest["llm"]["id"] = "tiny-org/not-downloaded"
    (checkpoint / "xmm.json").write_text(json.dumps(manifest))
    start = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="'tiny-org/not-downloaded' is not in the Hugging Face cache.*hf download"):
        MultimodalLM.from_pretrained(checkpoint)
    assert time.monotonic() - start < 5.0


def test_bridge_pushed_alone_and_pulled_by_repo_id(trained_model, fake_hub, hf_cache, monkeypatch, no_network):
    bridge = trained_model.bridges["smell"]
    url = hub.push_bridge(bridge, "me/smell-bridge", private=False)
    assert url.startswith("https://huggingface.co/me/smell-bridge/commit/")
    up = fake_hub.kwargs("upload_folder")
    assert (up["repo_id"], up["repo_type"], up["commit_message"]) == ("me/smell-bridge", "model", "Upload xmm mlp bridge")
    uploaded = fake_hub.uploads[-1]
    assert files_under(uploaded) == ["README.md", "config.json", "model.safetensors"]
    card = ModelCard.load(uploaded / "README.md")
    assert card.data.library_name == "xmm" and card.data.tags == ["xmm", "bridge", "bridge-mlp"]
    assert 'load_bridge("me/smell-bridge")' in card.text
    populate_cache(hf_cache, "me/smell-bridge", uploaded)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_bridge("me/smell-bridge")
    assert type(loaded) is type(bridge) and _same_state(loaded, bridge)
    with pytest.raises(CheckpointError, match="xmm.json is missing"):
        MultimodalLM.from_pretrained("me/smell-bridge")


def test_one_bridge_of_a_checkpoint_repo(trained_model, pushed, hf_cache, offline, no_network, tmp_path):
    populate_cache(hf_cache, REPO, pushed)
    loaded = load_bridge(REPO, subfolder="bridges/smell")
    assert _same_state(loaded, trained_model.bridges["smell"])
    with pytest.raises(CheckpointError, match=r"folders that hold one: \['bridges/smell'\] \(pass subfolder=\)"):
        load_bridge(REPO)
    with pytest.raises(CheckpointError, match=r"holds no bridge \(config.json is missing\)"):
        load_bridge(tmp_path)  # an existing folder without config.json is not sent to the Hub


def test_deprecated_bridge_entry_points_still_work(trained_model, fake_hub, hf_cache, monkeypatch, no_network):
    bridge = trained_model.bridges["smell"]
    with pytest.warns(DeprecationWarning, match="xmm.hub.push_bridge"):
        bridge.push_to_hub("me/smell-bridge")
    populate_cache(hf_cache, "me/smell-bridge", fake_hub.uploads[-1])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.warns(DeprecationWarning, match="xmm.registry.load_bridge"):
        loaded = Bridge.from_pretrained("me/smell-bridge")
    assert type(loaded) is type(bridge) and _same_state(loaded, bridge)


@pytest.mark.slow
def test_offline_load_in_a_fresh_process(trained_model, pushed, tmp_path):
    """HF_HUB_OFFLINE / HF_HUB_CACHE set before Python starts, as a user would: load by repo id, no network."""
    cache = tmp_path / "hf-home" / "hub"
    populate_cache(cache, REPO, pushed)
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]);"
        "import xmm.registry as r, xmm_hubtest_plugin as p; p.install(r);"
        "from xmm import MultimodalLM; m = MultimodalLM.from_pretrained(sys.argv[2]);"
        "print(json.dumps({'dir': str(m.checkpoint_dir), 'sum': sum(float(v.double().sum()) for v in "
        "m.bridges['smell'].state_dict().values())}))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "XMM_HOME": str(tmp_path / "xmm")}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), REPO], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(result["dir"]).is_relative_to(cache / "models--me--smell-lm" / "snapshots")
    want = sum(float(v.double().sum()) for v in trained_model.bridges["smell"].state_dict().values())
    assert result["sum"] == pytest.approx(want, rel=1e-12)
