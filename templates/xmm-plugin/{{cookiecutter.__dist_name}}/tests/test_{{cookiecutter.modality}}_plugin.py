"""Tests of the `{{ cookiecutter.modality }}` plugin: loading, encoding shapes, discovery through the entry point, the
default bridge on the encoder's features, and a training step of a tiny LLM. Run them with `python -m pytest` after
`pip install -e .`.

The fixtures (``fresh_registry``, ``tiny_llm_dir``, ``device``, ...) come from xmm's pytest plugin, which xmm-core
installs: see ``xmm.testing``. A plugin that brings bridges checks them with
``xmm.testing.contracts.BridgeContract``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError

from {{ cookiecutter.__package_name }} import (
    ENCODER_NAME,
    MODALITY,
    {{ cookiecutter.__class_name }}Encoder,
    load_{{ cookiecutter.modality }},
)

DIST = "{{ cookiecutter.__dist_name }}"


def _example_path(tmp_path, values):
    """A file of one of the declared types holding ``values``."""
    ext = MODALITY.file_extensions[0] if MODALITY.file_extensions else ".npy"
    path = tmp_path / f"example{ext}"
    if ext == ".npy":
        np.save(path, np.asarray(values, dtype=np.float32))
    elif ext in {".txt", ".csv", ".tsv"}:
        path.write_text(",".join(str(v) for v in values))
    else:
        path.write_bytes(bytes(int(v) % 256 for v in values))
    return path


def test_load_from_file_bytes_and_array(tmp_path):
    values = [float(i % 7) for i in range(50)]
    from_file = load_{{ cookiecutter.modality }}(_example_path(tmp_path, values))
    assert from_file.dtype == np.float32 and from_file.shape == (50,)
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    from_npy_bytes = load_{{ cookiecutter.modality }}((tmp_path / "a.npy").read_bytes())
    assert from_npy_bytes.tolist() == [0, 1, 2, 3, 4, 5]
    assert load_{{ cookiecutter.modality }}(b"1.5, 2\n3").tolist() == [1.5, 2.0, 3.0]
    assert load_{{ cookiecutter.modality }}([[1, 2], [3, 4]]).shape == (4,)


def test_load_refuses_bad_input(tmp_path):
    ext = MODALITY.file_extensions[0] if MODALITY.file_extensions else ".npy"
    with pytest.raises(MediaError, match="cannot read file"):
        load_{{ cookiecutter.modality }}(tmp_path / f"missing{ext}")
    if MODALITY.file_extensions:
        with pytest.raises(MediaError, match="unsupported file type"):
            load_{{ cookiecutter.modality }}(tmp_path / "wrong.unknown-type")
    with pytest.raises(EmptyMediaError):
        load_{{ cookiecutter.modality }}(b"")
    with pytest.raises(CorruptMediaError, match="NaN"):
        load_{{ cookiecutter.modality }}(np.array([1.0, np.nan]))


def test_encoder_shapes_and_padding():
    encoder = {{ cookiecutter.__class_name }}Encoder(frame_size=16, max_frames=8)
    assert encoder.frozen and encoder.output_dim == 4 + 16 // 2 + 1
    long_signal = np.sin(np.linspace(0, 20, 1000)).astype(np.float32)  # 63 frames, truncated to 8
    short_signal = np.ones(20, dtype=np.float32)  # 2 frames, the second zero-padded
    out = encoder.encode([long_signal, short_signal])
    assert out.features.shape == (2, 8, encoder.output_dim)
    assert out.mask.tolist() == [[True] * 8, [True, True] + [False] * 6]
    assert torch.all(out.features[1, 2:] == 0)
    # the first statistic is the frame mean: a constant signal of ones has mean 1 in its first frame
    assert out.features[1, 0, 0].item() == pytest.approx(1.0)
    assert torch.isfinite(out.features).all()
    assert encoder.fingerprint()["preprocess"] == {"frame_size": 16, "max_frames": 8}


def test_registry_finds_the_plugin_through_its_entry_point(fresh_registry):
    registry = fresh_registry
    spec = registry.modality(MODALITY.name)
    assert spec.placeholder == "{{ cookiecutter.placeholder }}"
    info = next(p for p in registry.plugins if MODALITY.name in p.modalities)
    assert info.distribution == DIST and info.error is None
    assert ENCODER_NAME in info.encoders
    encoder = registry.create_encoder(spec.default_encoder, frame_size=8)
    assert isinstance(encoder, {{ cookiecutter.__class_name }}Encoder)


def test_default_bridge_maps_features_to_llm_embeddings(fresh_registry, tmp_path):
    registry = fresh_registry
    spec = registry.modality(MODALITY.name)
    encoder = registry.create_encoder(spec.default_encoder)
    features = encoder.encode([spec.load(_example_path(tmp_path, list(range(200))))])
    llm_width = 64
    config = {**spec.default_bridge_config, "type": spec.default_bridge}
    bridge = registry.create_bridge({**config, "input_dim": encoder.output_dim, "output_dim": llm_width})
    out = bridge(features.features, features.mask, modality=spec.name)
    assert out.embeds.shape[0] == 1 and out.embeds.shape[-1] == llm_width
    assert out.mask.shape == out.embeds.shape[:2]
    assert torch.isfinite(out.embeds).all()


def test_a_tiny_llm_learns_through_the_default_bridge(fresh_registry, tiny_llm_dir, device, tmp_path):
    """The modality inside a MultimodalLM over xmm's tiny test LLM: a conversation about one item gives a finite loss
    whose gradient reaches the bridge."""
    from xmm.model import MultimodalLM

    torch.manual_seed(0)
    model = MultimodalLM.from_config({"llm": str(tiny_llm_dir), "modalities": {MODALITY.name: {}}, "autocast": "off",
                                      "device": str(device)}, registry=fresh_registry)
    path = _example_path(tmp_path, [float(i % 11) for i in range(200)])
    question = [{"type": MODALITY.name, "path": str(path)}, {"type": "text", "text": "What is it?"}]
    answer = [{"type": "text", "text": "a signal"}]
    batch = model.collator()([{"messages": [{"role": "user", "content": question},
                                            {"role": "assistant", "content": answer}]}])
    model.train()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    bridge = model.bridges[MODALITY.name]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bridge.parameters())
