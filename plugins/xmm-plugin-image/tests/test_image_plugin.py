"""xmm-plugin-image as the registry sees it: entry point, modality spec, encoders and the default Q-Former bridge."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner
from xmm.registry import get_registry


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def test_entry_point_registers_modality_and_encoders(registry):
    info = next(p for p in registry.plugins if p.name == "image")
    assert info.error is None and info.distribution == "xmm-plugin-image"
    assert info.modalities == ["image"]
    assert info.encoders == ["efficientnet-lite0", "hf-vision", "timm"]


def test_spec(registry, image_files):
    spec = registry.modality("image")
    assert spec.placeholder == "<image>" and spec.encoder == "efficientnet-lite0"
    assert spec.bridge == {"type": "qformer", "num_queries": 32}
    assert ".png" in spec.file_extensions and ".webp" in spec.file_extensions
    img = spec.load(image_files["jpg"])
    assert img.mode == "RGB"
    assert spec.content_hash(image_files["png"]) == spec.content_hash(image_files["png"].read_bytes())
    assert len(spec.content_hash(img)) == 64  # in-memory images are cacheable too


def test_default_encoder_and_bridge_produce_32_queries(registry, photos):
    spec = registry.modality("image")
    enc = registry.create_encoder(spec.encoder, **spec.encoder_config)
    feats = enc.encode([spec.load(photos["chelsea"]), spec.load(photos["coffee"])])
    assert feats.features.shape == (2, 49, 1280)
    cfg = {**spec.bridge, "input_dim": enc.output_dim, "output_dim": 48,
           "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
    bridge = registry.create_bridge(cfg)
    out = bridge(feats.features, feats.mask)
    assert bridge.num_output_tokens(feats.features.shape[1]) == 32
    assert out.embeds.shape == (2, 32, 48) and out.mask.all()


def test_xmm_plugins_lists_the_image_plugin():
    from xmm.cli.main import app

    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert rows["image"]["modalities"] == ["image"] and "efficientnet-lite0" in rows["image"]["encoders"]


def test_bad_encoder_config_names_the_field(registry):
    from xmm.errors import ConfigError

    with pytest.raises(ConfigError, match="'image_sise'"):
        registry.create_encoder("efficientnet-lite0", image_sise=128)
