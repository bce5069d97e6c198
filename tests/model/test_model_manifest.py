"""The typed xmm.json: old manifests load, malformed values and paths out of the folder are CheckpointErrors that name
the field and the file, media token counts are the bridge's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from xmm.errors import CheckpointError, IncompatibleCheckpointError
from xmm.model import MultimodalLM, embedding_fingerprint
from xmm.persist.manifest import MANIFEST, Manifest, parse_manifest, read_manifest

FIXTURES = Path(__file__).parent / "fixtures" / "head_checkpoints"
OLD = sorted(p.name for p in FIXTURES.iterdir() if (p / MANIFEST).is_file())


def _copy_for(llm: Any, name: str, tmp_path: Path) -> Path:
    """A copy of an old checkpoint whose manifest pins the given LLM's fingerprint (random init may differ between
    torch versions); nothing else of the manifest is touched."""
    ck = tmp_path / name
    shutil.copytree(FIXTURES / name, ck)
    data = json.loads((ck / MANIFEST).read_text())
    data["llm"]["embedding_fingerprint"] = embedding_fingerprint(llm.model)
    (ck / MANIFEST).write_text(json.dumps(data))
    return ck


def _decoders(name: str) -> dict[str, Any] | None:
    if name != "image_output":
        return None
    from xmm.decoders.diffusion import DiffusersDecoder
    from xmm.decoders.tiny import tiny_stable_diffusion

    return {"image": DiffusersDecoder(tiny_stable_diffusion(), num_inference_steps=2, guidance_scale=2.0)}


def _saved(ck: Path) -> dict[str, torch.Tensor]:
    return {f"{f.relative_to(ck)}:{k}": v for f in ck.rglob("*.safetensors") for k, v in load_file(f).items()}


def test_fixtures_are_manifests_written_before_the_typed_model() -> None:
    assert OLD == ["image_output", "inputs_lora", "shared_bridge"]
    for name in OLD:
        raw = json.loads((FIXTURES / name / MANIFEST).read_text())
        assert "media_tokens" not in json.dumps(raw)  # written by the code before this field existed
        assert isinstance(read_manifest(FIXTURES / name), Manifest)


@pytest.mark.parametrize("name", OLD)
def test_old_checkpoints_load_with_their_weights(name: str, registry, tiny_llm, tmp_path: Path) -> None:
    ck = _copy_for(tiny_llm, name, tmp_path)
    model = MultimodalLM.from_pretrained(ck, llm=tiny_llm, registry=registry, decoders=_decoders(name))
    manifest = read_manifest(ck)
    assert [t.text for t in model.new_tokens.tokens] == [t.text for t in manifest.tokens]
    assert model.bridge_names == {m: e.bridge for m, e in manifest.modalities.items()}
    # every saved tensor is back in the model, unchanged
    resaved = model.save_pretrained(tmp_path / "again")
    before, after = _saved(ck), _saved(resaved)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    again = read_manifest(resaved)
    assert again.tokens == manifest.tokens and again.bridges == manifest.bridges
    assert again.modalities.keys() == manifest.modalities.keys()
    assert model.generate("hi", max_new_tokens=3).token_ids


def _manifest(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURES / "inputs_lora", ck)
    return ck, json.loads((ck / MANIFEST).read_text())


# (field as the error names it, how to break it): the places where a wrong type used to raise a bare traceback
MALFORMED = [
    ("format_version", lambda d: d.update(format_version="one")),
    ("llm", lambda d: d.update(llm=["not", "a", "mapping"])),
    ("llm.embedding_fingerprint", lambda d: d["llm"].update(embedding_fingerprint=12)),
    ("llm.vocab_size", lambda d: d["llm"].update(vocab_size="49152")),
    ("modalities.image.encoder", lambda d: d["modalities"]["image"].update(encoder="tiny-image")),
    ("modalities.image.encoder.trainable", lambda d: d["modalities"]["image"]["encoder"].update(trainable="no")),
    ("modalities.image.encoder.config", lambda d: d["modalities"]["image"]["encoder"].update(config=[1])),
    ("bridges.image.type", lambda d: d["bridges"]["image"].update(type=None)),
    ("bridges.image.modalities", lambda d: d["bridges"]["image"].update(modalities="image")),
    ("tokens.0.id", lambda d: d["tokens"][0].update(id="49152")),
    ("tokens.3.trainable", lambda d: d["tokens"][3].update(trainable=1)),
    ("tokens", lambda d: d.update(tokens={"<image>": 1})),
    ("lora", lambda d: d.update(lora="r=2")),
    ("decoders", lambda d: d.update(decoders=[])),
    ("config", lambda d: d.pop("config")),
]


@pytest.mark.parametrize("field,breaks", MALFORMED, ids=[f for f, _ in MALFORMED])
def test_malformed_values_name_the_field_and_the_file(field: str, breaks: Any, tmp_path: Path) -> None:
    ck, data = _manifest(tmp_path)
    breaks(data)
    (ck / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
        MultimodalLM.from_pretrained(ck)
    assert f"field '{field}'" in str(e.value) and str(ck / MANIFEST) in str(e.value)


@pytest.mark.parametrize("field,value", [
    ("lora.r", {"r": "two", "alpha": 4}),
    ("config.dtype", "int8"),
])
def test_values_checked_by_the_model_config_name_the_field_too(field: str, value: Any, registry, tmp_path: Path) -> None:
    ck, data = _manifest(tmp_path)
    if field.startswith("lora"):
        data["lora"] = value
    else:
        data["config"]["dtype"] = value
    (ck / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
        MultimodalLM.from_pretrained(ck, registry=registry)
    assert f"field '{field}'" in str(e.value) and str(ck / MANIFEST) in str(e.value)


def test_unreadable_and_foreign_manifests(tmp_path: Path) -> None:
    ck, data = _manifest(tmp_path)
    (ck / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read the manifest"):
        read_manifest(ck)
    (ck / MANIFEST).write_text(json.dumps([data]))
    with pytest.raises(CheckpointError, match="a manifest is a JSON object"):
        read_manifest(ck)
    (ck / MANIFEST).write_text(json.dumps({**data, "format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an xmm checkpoint manifest"):
        read_manifest(ck)
    (ck / MANIFEST).write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(IncompatibleCheckpointError, match="newer than this xmm supports"):
        read_manifest(ck)
    # fields a later xmm adds under the same format version are ignored
    assert parse_manifest({**data, "added_later": {"x": 1}}).llm.vocab_size == data["llm"]["vocab_size"]


@pytest.mark.parametrize("field,path", [
    ("bridges.image.path", "../other/bridges/image"),
    ("bridges.image.path", "/etc"),
    ("bridges.image.path", "bridges/../../image"),
    ("modalities.device.encoder.path", "../encoders/device"),
    ("bridges.image.path", "C:/bridges/image"),
])
def test_paths_must_stay_inside_the_checkpoint(field: str, path: str, tmp_path: Path) -> None:
    ck, data = _manifest(tmp_path)
    (tmp_path / "other" / "bridges").mkdir(parents=True)
    shutil.copytree(ck / "bridges" / "image", tmp_path / "other" / "bridges" / "image")
    if field.startswith("bridges"):
        data["bridges"]["image"]["path"] = path
    else:
        data["modalities"]["device"]["encoder"]["path"] = path
    (ck / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CheckpointError) as e:
        MultimodalLM.from_pretrained(ck)
    assert f"field '{field}'" in str(e.value) and str(ck / MANIFEST) in str(e.value)


LINKED = {"bridge folder": "bridges/image", "bridge weights": "bridges/audio/model.safetensors",
          "bridge config": "bridges/device/config.json", "new-token rows": "new_tokens.safetensors", "lora folder": "lora",
          "lora weights": "lora/adapter_model.safetensors", "encoder weights": "encoders/device/model.safetensors"}


@pytest.mark.parametrize("what", sorted(LINKED))
def test_symlinks_out_of_the_checkpoint_are_refused(what: str, registry, tiny_llm, tmp_path: Path) -> None:
    ck = _copy_for(tiny_llm, "inputs_lora", tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = ck / LINKED[what]
    moved = outside / target.name
    shutil.move(str(target), str(moved))
    target.symlink_to(moved)
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        MultimodalLM.from_pretrained(ck, llm=tiny_llm, registry=registry)


def test_a_symlink_inside_the_checkpoint_is_fine(registry, tiny_llm, tmp_path: Path) -> None:
    ck = _copy_for(tiny_llm, "inputs_lora", tmp_path)
    (ck / "bridges" / "image").rename(ck / "bridges" / "image-real")
    (ck / "bridges" / "image").symlink_to(ck / "bridges" / "image-real")
    MultimodalLM.from_pretrained(ck, llm=tiny_llm, registry=registry)


def test_modalities_and_bridges_must_name_each_other(tmp_path: Path) -> None:
    ck, data = _manifest(tmp_path)
    data["modalities"]["image"]["bridge"] = "nowhere"
    (ck / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="field 'modalities.image.bridge'"):
        MultimodalLM.from_pretrained(ck)
    ck, data = _manifest(tmp_path / "2")
    data["bridges"]["audio"]["modalities"] = ["audio", "smell"]
    (ck / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"field 'bridges.audio.modalities': \['smell'\]"):
        MultimodalLM.from_pretrained(ck)


def test_manifest_records_media_tokens_from_encoder_and_bridge(registry, tiny_llm, tiny_config, tmp_path: Path) -> None:
    qformer = {"type": "qformer", "num_queries": 3, "hidden_size": 16, "num_layers": 2, "num_heads": 2,
               "intermediate_size": 32}
    cfg = tiny_config(modalities={"image": {"bridge": qformer}, "audio": {}, "device": {"bridge": {"type": "mlp",
                                                                                                 "tokens_per_input": 3}}})
    model = MultimodalLM.from_config(cfg, llm=tiny_llm, registry=registry)
    ck = model.save_pretrained(tmp_path / "ck")
    manifest = read_manifest(ck)
    # image: the Q-Former's queries; audio: a per-frame bridge over a variable-length encoder (unknown before the
    # forward pass); device: 2 encoder tokens x 3 outputs each
    assert {m: e.media_tokens for m, e in manifest.modalities.items()} == {"image": 3, "audio": None, "device": 6}
    assert {m: e.encoder.num_tokens for m, e in manifest.modalities.items()} == {"image": 4, "audio": None, "device": 2}
