"""Reading, mixing down, resampling and validating audio (xmm_plugin_audio.io)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from xmm.errors import ConfigError, CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError
from xmm.testing.signals import RATE, sine
from xmm_plugin_audio.io import (
    AudioClip,
    AudioLoadConfig,
    AudioLoader,
    config_from_env,
    fingerprint_audio,
    load_audio,
    resample,
)


@pytest.mark.parametrize(("fmt", "subtype", "ext"), [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg")])
def test_reads_wav_flac_ogg_and_mixes_stereo_to_mono(tmp_path: Path, fmt: str, subtype: str, ext: str) -> None:
    left, right = sine(440), sine(660, amp=0.25)
    path = tmp_path / f"s.{ext}"
    sf.write(str(path), np.stack([left, right], axis=1), RATE, format=fmt, subtype=subtype)
    clip = load_audio(path)
    assert clip.sample_rate == RATE and clip.samples.ndim == 1 and clip.samples.dtype == np.float32
    assert abs(clip.duration - 1.0) < 0.01
    n = min(len(clip.samples), RATE)
    tol = 2e-3 if fmt != "OGG" else 0.05  # Vorbis is lossy
    assert np.abs(clip.samples[:n] - (left[:n] + right[:n]) / 2).mean() < tol


def test_bytes_fileobj_tuple_dict_and_int_pcm(tone_wav: Path) -> None:
    ref = load_audio(tone_wav).samples
    data = tone_wav.read_bytes()
    assert np.allclose(load_audio(data).samples, ref)
    assert np.allclose(load_audio(io.BytesIO(data)).samples, ref)
    pcm = (ref * 32767).astype(np.int16)
    assert np.allclose(load_audio((pcm, RATE)).samples, ref, atol=1e-3)
    clip = load_audio({"array": np.stack([ref, ref]), "sampling_rate": RATE})  # [C, N] torch-style layout
    assert clip.samples.shape == ref.shape and np.allclose(clip.samples, ref)
    assert load_audio(clip) is clip


def test_errors_name_the_input_and_the_problem(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="missing.wav.*file not found"):
        load_audio(tmp_path / "missing.wav", modality="speech")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEnot really audio")
    with pytest.raises(CorruptMediaError, match="bad.wav.*cannot decode"):
        load_audio(bad)
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), RATE)
    with pytest.raises(EmptyMediaError, match="0 frames"):
        load_audio(empty)
    with pytest.raises(MediaError, match="needs 'array'"):
        load_audio({"samples": sine()})
    with pytest.raises(MediaError, match="cannot read audio from a list"):
        load_audio([0.1, 0.2])


def test_silence_rejected_unless_allowed(tmp_path: Path) -> None:
    quiet = np.full(RATE, 1e-6, dtype=np.float32)
    with pytest.raises(EmptyMediaError, match=r"silent .*reject_silence=False"):
        load_audio((quiet, RATE))
    with pytest.raises(EmptyMediaError, match="-inf dBFS"):
        load_audio((np.zeros(RATE, np.float32), RATE))
    assert load_audio((quiet, RATE), AudioLoadConfig(reject_silence=False)).samples.shape == (RATE,)
    # -60 dBFS is audible and passes the default -80 dBFS threshold, not a -50 dBFS one
    soft = sine(amp=10 ** (-60 / 20))
    load_audio((soft, RATE))
    with pytest.raises(EmptyMediaError):
        load_audio((soft, RATE), AudioLoadConfig(silence_dbfs=-50))


def test_nan_and_too_long_inputs(tmp_path: Path) -> None:
    x = sine()
    x[100] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), x, RATE, subtype="FLOAT")
    with pytest.raises(CorruptMediaError, match="nan.wav.*1 NaN or infinite"):
        load_audio(path)
    long = tmp_path / "long.wav"
    sf.write(str(long), sine(seconds=3.0), RATE)
    with pytest.raises(MediaTooLargeError, match=r"3.00 s long; the limit is 2 s"):
        load_audio(long, AudioLoadConfig(max_seconds=2))
    with pytest.raises(MediaTooLargeError):
        load_audio((sine(seconds=3.0), RATE), AudioLoadConfig(max_seconds=2))


def test_resample_keeps_frequency_and_length() -> None:
    x = sine(1000, seconds=1.0, rate=48000)
    y = resample(x, 48000, RATE)
    assert y.dtype == np.float32 and abs(len(y) - RATE) <= 1
    peak_hz = np.argmax(np.abs(np.fft.rfft(y))) * RATE / len(y)
    assert abs(peak_hz - 1000) < 2
    clip = AudioClip(x, 48000)
    assert clip.resampled(48000) is clip and clip.resampled(RATE).sample_rate == RATE


def test_loader_config_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XMM_AUDIO_MAX_SECONDS", "5")
    monkeypatch.setenv("XMM_AUDIO_REJECT_SILENCE", "0")
    cfg = config_from_env("audio", AudioLoadConfig())
    assert cfg.max_seconds == 5 and cfg.reject_silence is False
    loader = AudioLoader(cfg, modality="audio")
    assert loader((np.zeros(RATE, np.float32), RATE)).duration == 1.0
    monkeypatch.setenv("XMM_AUDIO_MAX_SECONDS", "soon")
    with pytest.raises(ConfigError, match="max_seconds"):
        config_from_env("audio", AudioLoadConfig())
    with pytest.raises(Exception, match="extra"):
        AudioLoadConfig(max_secs=3)


def test_fingerprint_is_content_based(tone_wav: Path) -> None:
    a = fingerprint_audio(tone_wav)
    assert a == fingerprint_audio(str(tone_wav)) == fingerprint_audio(tone_wav.read_bytes())
    x = sine()
    assert fingerprint_audio((x, RATE)) == fingerprint_audio({"array": x.copy(), "sampling_rate": RATE})
    assert fingerprint_audio((x, RATE)) != fingerprint_audio((x, 8000))
