"""The installed entry point registers the audio modality and its encoders; the spec validates on load."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from xmm.errors import EmptyMediaError
from xmm.registry import Registry
from xmm.testing.signals import RATE, sine
from xmm_plugin_audio import plugin
from xmm_plugin_audio.io import AudioClip


def _registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.register(plugin, name="audio", distribution="xmm-plugin-audio")
    return reg


def test_entry_point_is_installed() -> None:
    reg = Registry(strict=False)
    info = next(p for p in reg.plugins if p.name == "audio")
    assert info.error is None and info.distribution == "xmm-plugin-audio"
    assert info.modalities == ["audio"] and info.encoders == ["hf-audio", "torchcrepe"]


def test_spec_loads_and_validates(tone_wav: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _registry().modality("audio")
    assert spec.placeholder == "<audio>" and spec.encoder == "torchcrepe" and ".flac" in spec.file_extensions
    clip = spec.load(tone_wav)
    assert isinstance(clip, AudioClip) and clip.sample_rate == RATE
    with pytest.raises(EmptyMediaError, match="audio input.*silent"):
        spec.load((np.zeros(RATE, np.float32), RATE))
    assert spec.content_hash(tone_wav) == spec.content_hash(tone_wav.read_bytes())
    assert len(spec.content_hash((sine(), RATE))) == 64
    monkeypatch.setenv("XMM_AUDIO_REJECT_SILENCE", "0")
    assert _registry().modality("audio").load((np.zeros(RATE, np.float32), RATE)).duration == 1.0


@pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None, reason="pip install 'xmm-plugin-audio[crepe]'")
def test_default_encoder_from_the_registry(tone_wav: Path) -> None:
    reg = _registry()
    spec = reg.modality("audio")
    enc = reg.create_encoder(spec.encoder, **spec.encoder_config)
    out = enc.encode([spec.load(tone_wav)])
    assert out.features.shape == (1, 10, enc.output_dim)
    assert enc.fingerprint()["preprocess"]["clip_seconds"] == 10.0
