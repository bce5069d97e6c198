"""The synthetic sound-event dataset: format, balance, determinism, and that each answer is physically true."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from xmm.errors import ConfigError
from xmm_plugin_audio.io import load_audio
from xmm_plugin_audio.synthetic import (
    ALSA_SOUNDS,
    ANSWERS,
    QUESTIONS,
    RATE,
    alsa_manifest,
    main,
    make_audio_dataset,
    make_example,
)


def _dominant_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * RATE / len(x))


def _bursts(x: np.ndarray) -> int:
    env = np.convolve(np.abs(x), np.ones(160) / 160, mode="same")
    on = env > 0.2 * env.max()
    return int(np.sum(on[1:] & ~on[:-1]) + on[0])


def _peakiness(x: np.ndarray) -> float:
    """Share of the energy in the 20 strongest frequency bins: ~1 for a tone, small for noise."""
    p = np.sort(np.abs(np.fft.rfft(x)) ** 2)[::-1]
    return float(p[:20].sum() / p.sum())


def test_manifest_format_balance_and_determinism(tmp_path: Path) -> None:
    manifest = make_audio_dataset(tmp_path / "a", n=16, seed=3, split_name="train")
    lines = [json.loads(s) for s in manifest.read_text().splitlines()]
    assert len(lines) == 16
    first = lines[0]
    user, assistant = first["messages"]
    assert user["role"] == "user" and user["content"][0]["type"] == "audio" and user["content"][1]["text"] in QUESTIONS.values()
    assert assistant["content"][0]["text"] == first["meta"]["answer"] in ANSWERS[first["meta"]["task"]]
    for line in lines:
        clip = load_audio(manifest.parent / line["messages"][0]["content"][0]["path"])
        assert clip.sample_rate == RATE and 0.3 < clip.duration < 2.5
    assert Counter(x["meta"]["task"] for x in lines) == {t: 4 for t in QUESTIONS}
    assert {x["meta"]["answer"] for x in lines if x["meta"]["task"] == "count"} == set(ANSWERS["count"])
    again = make_audio_dataset(tmp_path / "b", n=16, seed=3, split_name="train")
    other = make_audio_dataset(tmp_path / "c", n=16, seed=4, split_name="test")
    assert again.read_text() == manifest.read_text()
    assert (tmp_path / "b/train/00005.wav").read_bytes() == (tmp_path / "a/train/00005.wav").read_bytes()
    assert other.name == "test.jsonl" and other.read_text() != manifest.read_text()


@pytest.mark.parametrize("seed", [0, 1])
def test_answers_are_physically_true(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for answer in ANSWERS["contour"]:
        x, p = make_example("contour", answer, rng)
        half = len(x) // 2
        a, b = _dominant_hz(x[:half]), _dominant_hz(x[half:])
        expected = {"rising": b > 1.3 * a, "falling": a > 1.3 * b, "steady": abs(a - b) < 0.05 * a}[answer]
        assert expected, (answer, a, b, p)
    for i, answer in enumerate(ANSWERS["count"]):
        x, _ = make_example("count", answer, rng)
        assert _bursts(x) == i + 1
    hz = {a: _dominant_hz(make_example("register", a, rng)[0]) for a in ANSWERS["register"]}
    assert hz["high"] >= 870 and hz["low"] <= 225
    for _ in range(4):  # both noise colours come up
        assert _peakiness(make_example("source", "noise", rng)[0]) < 0.2
        assert _peakiness(make_example("source", "tone", rng)[0]) > 0.8
    with pytest.raises(ConfigError, match="answer"):
        make_example("count", "five", rng)


def test_cli_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main([str(tmp_path), "--n", "3", "--seed", "1", "--split", "dev", "--tasks", "count"])
    assert capsys.readouterr().out.strip().endswith("dev.jsonl")
    assert all(json.loads(s)["meta"]["task"] == "count" for s in (tmp_path / "dev.jsonl").read_text().splitlines())
    with pytest.raises(ConfigError, match="tasks"):
        make_audio_dataset(tmp_path, 2, 0, tasks=["colour"])


@pytest.mark.skipif(not ALSA_SOUNDS.is_dir(), reason="alsa-utils sounds missing (scripts/system-deps.sh installs them)")
def test_alsa_real_clips_manifest(tmp_path: Path) -> None:
    manifest = alsa_manifest(tmp_path)
    lines = [json.loads(s) for s in manifest.read_text().splitlines()]
    labels = {x["messages"][0]["content"][0]["path"]: x["meta"]["label"] for x in lines}
    assert labels["alsa/Noise.wav"] == "noise" and labels["alsa/Front_Center.wav"] == "speech"
    clip = load_audio(tmp_path / "alsa/Front_Center.wav")
    assert clip.sample_rate == 48000 and 1.0 < clip.duration < 2.0
