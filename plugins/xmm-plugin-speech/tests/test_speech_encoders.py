"""Speech encoders: transformers speech encoders by path (tiny checkpoints), frame trimming, limits."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from xmm.errors import ConfigError, MediaTooLargeError
from xmm.registry import Registry
from xmm.testing.signals import RATE, sine
from xmm_plugin_audio.io import AudioClip
from xmm_plugin_audio.testing import save_tiny_audio_model
from xmm_plugin_speech import plugin

tone = partial(sine, 220.0, amp=0.3)  # the tone these tests were written with


def _registry() -> Registry:
    reg = Registry(entry_points=False)
    reg.register(plugin, name="speech", distribution="xmm-plugin-speech")
    return reg


def test_whisper_encoder_keeps_only_frames_of_real_audio(tmp_path: Path) -> None:
    path = save_tiny_audio_model("whisper", tmp_path / "w")
    enc = _registry().create_encoder("hf-speech", model=str(path))
    assert enc.clip_seconds is None and enc.max_seconds == 30 and enc.tokens_per_second() == 50
    out = enc.encode([AudioClip(tone(seconds=2.0), RATE), AudioClip(tone(seconds=0.31), RATE)])
    # 30 s padded input -> 1500 frames; 2.0 s -> 100 real frames, 0.31 s -> 16
    assert out.features.shape == (2, 100, 32) and out.mask.sum(1).tolist() == [100, 16]
    full = enc.model(enc.extract([torch.from_numpy(tone(seconds=2.0))])["input_features"]).last_hidden_state
    assert full.shape == (1, 1500, 32) and torch.allclose(out.features[0], full[0, :100], atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # MultimodalLM runs encoders under bf16 autocast
        bf16 = enc.encode([AudioClip(tone(seconds=2.0), RATE)])
    assert bf16.features.shape == (1, 100, 32) and torch.allclose(bf16.features, out.features[:1], atol=0.1)
    with pytest.raises(MediaTooLargeError, match="at most 30 s"):
        enc.preprocess(AudioClip(tone(seconds=31.0), RATE))


def test_whisper_window_option(tmp_path: Path) -> None:
    path = save_tiny_audio_model("whisper", tmp_path / "w")
    enc = _registry().create_encoder("hf-speech", model=str(path), window_seconds=4)
    assert enc.max_seconds == 4 and enc.model.embed_positions.num_embeddings == 200
    out = enc.encode([AudioClip(tone(seconds=2.0), RATE)])
    assert out.features.shape == (1, 100, 32) and enc.fingerprint()["preprocess"]["window_seconds"] == 4
    with pytest.raises(MediaTooLargeError, match="at most 4 s"):
        enc.preprocess(AudioClip(tone(seconds=5.0), RATE))
    with pytest.raises(ConfigError, match="Whisper encoders only"):
        _registry().create_encoder("hf-speech", model=str(save_tiny_audio_model("hubert", tmp_path / "h")), window_seconds=4)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_wav2vec2_style_encoders(tmp_path: Path, kind: str) -> None:
    path = save_tiny_audio_model(kind, tmp_path / kind)
    enc = _registry().create_encoder("hf-speech", model=str(path), layer=1)
    out = enc.encode([AudioClip(tone(seconds=0.5), RATE), AudioClip(tone(seconds=0.25), RATE)])
    # conv strides 5 * 4: (8000 - 10) // 5 + 1 = 1599 -> (1599 - 4) // 4 + 1 = 399 frames; 4000 samples -> 199
    assert out.mask.sum(1).tolist() == [399, 199] and out.features.shape[-1] == 32
    with pytest.raises(ConfigError, match="clip_secs"):
        _registry().create_encoder("hf-speech", model=str(path), clip_secs=3)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    from xmm.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="cannot load the audio encoder"):
        _registry().create_encoder("hf-speech", model=str(tmp_path / "nothing"), local_files_only=True)
