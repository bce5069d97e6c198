"""The installed entry point, the speech spec (loading limits) and the default bridge it asks for."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from xmm.errors import EmptyMediaError, MediaTooLargeError
from xmm.registry import Registry
from xmm.testing.signals import RATE, sine
from xmm_plugin_audio.testing import save_tiny_audio_model
from xmm_plugin_speech import plugin

tone = partial(sine, 220.0, amp=0.3)  # the tone these tests were written with


def _registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.register(plugin, name="speech", distribution="xmm-plugin-speech")
    return reg


def test_entry_point_is_installed() -> None:
    info = next(p for p in Registry(strict=False).plugins if p.name == "speech")
    assert info.error is None and info.distribution == "xmm-plugin-speech"
    assert info.modalities == ["speech"] and info.encoders == ["hf-speech", "whisper-base"]


def test_spec_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _registry().modality("speech")
    assert spec.placeholder == "<speech>" and spec.encoder == "whisper-base" and spec.bridge["type"] == "cformer"
    long = tmp_path / "long.flac"
    sf.write(str(long), tone(seconds=31), RATE, format="FLAC")
    with pytest.raises(MediaTooLargeError, match="speech input.*long.flac.*limit is 30 s"):
        spec.load(long)
    with pytest.raises(EmptyMediaError, match="speech input.*silent"):
        spec.load((np.zeros(RATE, np.float32), RATE))
    monkeypatch.setenv("XMM_SPEECH_MAX_SECONDS", "40")
    assert _registry().modality("speech").load(long).duration == pytest.approx(31)


def test_default_cformer_bridge_over_tiny_whisper_features(tmp_path: Path) -> None:
    reg = Registry(strict=False)
    spec = reg.modality("speech")
    enc = reg.create_encoder("hf-speech", model=str(save_tiny_audio_model("whisper", tmp_path / "w")))
    bridge = reg.create_bridge({**spec.bridge, "input_dim": enc.output_dim, "output_dim": 48})
    feats = enc.encode([spec.load((tone(seconds=1.0), RATE)), spec.load((tone(seconds=0.5), RATE))])
    out = bridge(feats.features, feats.mask, target_lengths=torch.tensor([6.0, 3.0]))
    # CIF scaled to the target lengths fires exactly 6 and 3 token-level embeddings
    assert out.mask.sum(1).tolist() == [6, 3] and out.embeds.shape == (2, 6, 48)
    assert torch.isfinite(out.aux["cif_quantity"])
