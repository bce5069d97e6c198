"""Checkpoints: only trained parts + manifest; strict reload; clear errors for the wrong LLM or missing plugins."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import xmm.registry as registry_mod
from safetensors import safe_open
from xmm.errors import CheckpointError, IncompatibleCheckpointError
from xmm.llm import load_llm
from xmm.model import MultimodalLM, embedding_fingerprint


def _example(media_dir: Path) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image", "path": "red.png"}, {"type": "audio", "path": "long.npy"},
                                                      {"type": "text", "text": "?"}]},
                         {"role": "assistant", "content": "red <sig>"}], "base_dir": media_dir}


def _perturb(model: MultimodalLM) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g).to(p.device) * 0.1)


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in directory.rglob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[f"{f.relative_to(directory)}:{k}"] = st.get_tensor(k)
    return out


def test_roundtrip_saves_only_trained_parts(registry, tiny_llm, tiny_llm_dir: Path, tiny_config, media_dir: Path, tmp_path: Path) -> None:
    qformer = {"type": "qformer", "num_queries": 3, "hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 32}
    cfg = tiny_config(modalities={"image": {"bridge": qformer}, "audio": {}, "device": {}}, signal_tokens=["<sig>"],
                      lora={"r": 2, "alpha": 4})
    model = MultimodalLM.from_config(cfg, llm=tiny_llm, registry=registry)
    _perturb(model)
    ck = model.save_pretrained(tmp_path / "ck")
    files = sorted(str(p.relative_to(ck)) for p in ck.rglob("*") if p.is_file())
    assert files == ["bridges/audio/config.json", "bridges/audio/model.safetensors", "bridges/device/config.json",
                     "bridges/device/model.safetensors", "bridges/image/config.json", "bridges/image/model.safetensors",
                     "encoders/device/model.safetensors", "lora/adapter_config.json", "lora/adapter_model.safetensors",
                     "new_tokens.safetensors", "xmm.json"]
    # no LLM weight and no frozen encoder weight is written: every tensor is a bridge, LoRA, new-token or device-encoder one
    adapters = {id(p) for p in model.lora_parameters().values()}
    frozen = [p for n, p in model.llm.named_parameters() if id(p) not in adapters and "new" not in n]
    saved = _tensors(ck)
    for name, t in saved.items():
        assert name.startswith(("bridges/", "lora/", "new_tokens", "encoders/device/")), name
        assert not any(t.shape == p.shape and torch.equal(t, p) for p in frozen), name
    assert sum(t.numel() for t in saved.values()) < 0.01 * sum(p.numel() for p in frozen)
    assert not any(k.startswith("encoders/image") for k in _tensors(ck))
    man = json.loads((ck / "xmm.json").read_text())
    assert man["llm"]["id"] == str(tiny_llm_dir) and man["llm"]["revision"] == "tiny"
    assert man["llm"]["embedding_fingerprint"] == embedding_fingerprint(model.llm)
    assert man["modalities"]["image"]["encoder"]["id"] == "test/tiny-image"
    assert man["modalities"]["image"]["plugin"] == {"name": "tiny-test", "distribution": "xmm-plugin-tinytest", "version": "0.0.1"}
    assert [t["text"] for t in man["tokens"]] == ["<image>", "<audio>", "<device>", "<sig>"]
    import peft  # the adapter is in peft's own format

    assert peft.LoraConfig.from_pretrained(str(ck / "lora")).r == 2

    batch = model.collator()([_example(media_dir)])
    ref = model(batch).loss
    loaded = MultimodalLM.from_pretrained(ck, llm=load_llm(str(tiny_llm_dir)))
    assert not loaded.training and not loaded.bridges["image"].training  # no dropout after loading
    assert torch.allclose(loaded(loaded.collator()([_example(media_dir)])).loss, ref, atol=1e-6)
    for (n1, p1), (n2, p2) in zip(sorted(model.state_dict().items()), sorted(loaded.state_dict().items())):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert loaded.generate("hi", max_new_tokens=5).token_ids == model.generate("hi", max_new_tokens=5).token_ids
    # the default path: the manifest names the LLM, from_pretrained loads it itself
    assert MultimodalLM.from_pretrained(ck).llm_info["path"] == str(tiny_llm_dir)


def test_shared_bridge_saved_once(registry, tiny_llm, tiny_llm_dir: Path, tiny_config, tmp_path: Path) -> None:
    shared = {"image": {"shared_bridge": "s"}, "audio": {"shared_bridge": "s", "encoder_config": {"frame": 6}}}
    model = MultimodalLM.from_config(tiny_config(modalities=shared, shared_bridges={"s": {"type": "mlp"}}), llm=tiny_llm, registry=registry)
    ck = model.save_pretrained(tmp_path / "ck")
    assert sorted(p.name for p in (ck / "bridges").iterdir()) == ["s"]
    loaded = MultimodalLM.from_pretrained(ck, llm=load_llm(str(tiny_llm_dir)))
    assert loaded.bridges["image"] is loaded.bridges["audio"]
    assert torch.equal(loaded.bridges["image"].mlp[0].weight, model.bridges["audio"].mlp[0].weight)


def test_other_llm_is_rejected_with_what_is_expected(tiny_model, tmp_path: Path, tiny_llm_dir: Path) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    other = load_llm(str(tiny_llm_dir))
    with torch.no_grad():
        other.model.get_input_embeddings().weight[5] += 1.0
    other = dataclasses.replace(other, info=dataclasses.replace(other.info, id="someone/else", revision="r2"))
    with pytest.raises(IncompatibleCheckpointError) as e:
        MultimodalLM.from_pretrained(ck, llm=other)
    msg = str(e.value)
    fp = json.loads((ck / "xmm.json").read_text())["llm"]["embedding_fingerprint"]
    assert f"trained on LLM '{tiny_llm_dir}' (revision tiny, embedding fingerprint {fp})" in msg
    assert "the LLM given is 'someone/else' (revision r2, fingerprint sha256:" in msg


def test_missing_plugin_names_the_distribution(tiny_model, tmp_path: Path) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    bare = registry_mod.Registry(entry_points=False)
    with pytest.raises(IncompatibleCheckpointError,
                       match=r"needs modality 'image'.*'xmm-plugin-tinytest' version 0\.0\.1.*pip install 'xmm-plugin-tinytest==0\.0\.1'"):
        MultimodalLM.from_pretrained(ck, registry=bare)


def test_encoder_revision_mismatch(tiny_model, tmp_path: Path, tiny_llm_dir: Path, monkeypatch) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    # the plugin is upgraded: its encoder now reports another revision
    monkeypatch.setattr(type(tiny_model.encoders["image"]), "revision", "2")
    with pytest.raises(IncompatibleCheckpointError, match=r"encoder test/tiny-image revision 1, but the installed plugin gives "
                                                          r"test/tiny-image revision 2"):
        MultimodalLM.from_pretrained(ck, llm=load_llm(str(tiny_llm_dir)))


def test_resave_keeps_foreign_files_and_refuses_other_dirs(tiny_model, tmp_path: Path) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    (ck / "plan.yaml").write_text("stages: []\n")
    tiny_model.save_pretrained(ck)
    assert (ck / "plan.yaml").read_text() == "stages: []\n" and (ck / "xmm.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    other = tmp_path / "notes"
    other.mkdir()
    (other / "a.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not an xmm checkpoint; refusing"):
        tiny_model.save_pretrained(other)
    with pytest.raises(CheckpointError, match="no xmm.json"):
        MultimodalLM.from_pretrained(other)
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        MultimodalLM.from_pretrained(tmp_path / "nothing" / "here")


def test_repo_ids_go_through_xmm_pretrained(tiny_model, tmp_path: Path, tiny_llm_dir: Path, monkeypatch) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    calls = []

    def snapshot(repo_id, *, revision=None, download=False, **_):
        calls.append((repo_id, revision, download))
        return ck

    import xmm.pretrained

    monkeypatch.setattr(xmm.pretrained, "snapshot", snapshot)
    MultimodalLM.from_pretrained("someone/tiny-xmm", revision="v1", llm=load_llm(str(tiny_llm_dir)))
    assert calls == [("someone/tiny-xmm", "v1", True)]


def test_llm_of_an_earlier_model_can_be_reused(tiny_model, tmp_path: Path, tiny_llm_dir: Path, tiny_config, registry) -> None:
    ck = tiny_model.save_pretrained(tmp_path / "ck")
    ref = tiny_model.generate("hi", max_new_tokens=5).token_ids
    again = MultimodalLM.from_pretrained(ck, llm=tiny_model.loaded_llm)
    assert again.generate("hi", max_new_tokens=5).token_ids == ref
    assert type(again.llm.get_input_embeddings().base).__name__ == "Embedding"  # wrapped once, not twice
    lora = MultimodalLM.from_config(tiny_config(lora={"r": 2}), llm=again.loaded_llm, registry=registry)
    from xmm.errors import ConfigError

    with pytest.raises(ConfigError, match="carries LoRA adapters"):
        MultimodalLM.from_config(tiny_config(), llm=lora.loaded_llm, registry=registry)
    # the old (model, tokenizer, info) tuple still works for one release, with a warning
    fresh = load_llm(str(tiny_llm_dir))
    with pytest.warns(DeprecationWarning, match="LoadedLLM"):
        old = MultimodalLM.from_pretrained(ck, llm=(fresh.model, fresh.tokenizer, fresh.info.as_dict()))
    assert old.generate("hi", max_new_tokens=5).token_ids == ref
