"""Writing small videos with PyAV (synthetic data, tests, the long-video measurement script)."""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import ConfigError
from xmm.io import atomic_write

# container format and (preferred, fallback) video / audio codecs per file extension
_FORMATS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    ".mp4": ("mp4", ("libx264", "h264", "mpeg4"), ("aac",)),
    ".mov": ("mov", ("libx264", "h264", "mpeg4"), ("aac",)),
    ".mkv": ("matroska", ("libx264", "h264", "mpeg4"), ("libopus", "opus", "aac")),
    ".webm": ("webm", ("libvpx-vp9", "libvpx"), ("libopus", "opus", "libvorbis")),
}


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 25,
    codec: str | None = None,
    crf: int | None = None,
    gop: int | None = None,
    rotation: int | None = None,
    audio: tuple[np.ndarray, int] | None = None,
    preset: str | None = None,
) -> Path:
    """Encode ``frames`` (``[H, W, 3]`` uint8 RGB, even H and W) into ``path`` (atomically).

    The container and codecs follow the extension (.mp4/.mov: H.264 + AAC, .webm: VP9 + Opus, .mkv); ``gop`` sets the
    keyframe interval, ``rotation`` writes a display matrix (counter-clockwise degrees, as phones do) and ``audio`` =
    ``(samples [N] float in -1..1, sample_rate)`` adds a mono audio track.
    """
    import av

    path = Path(path)
    if path.suffix.lower() not in _FORMATS:
        raise ConfigError(f"cannot write '{path.suffix}' videos; use one of {sorted(_FORMATS)}", field="path")
    fmt, vcodecs, acodecs = _FORMATS[path.suffix.lower()]
    vcodec = codec or _first_available(vcodecs, av.codecs_available)

    def write(tmp: Path) -> None:
        it = iter(frames)
        first = next(it, None)
        if first is None:
            raise ConfigError("no frames to write", field="frames")
        h, w = first.shape[:2]
        with av.open(str(tmp), mode="w", format=fmt) as out:
            stream = out.add_stream(vcodec, rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            options: dict[str, str] = {}
            if crf is not None and vcodec in ("libx264", "libvpx-vp9", "libvpx"):
                options["crf"] = str(crf)
            if preset is not None and vcodec == "libx264":
                options["preset"] = preset
            if vcodec.startswith("libvpx"):
                options.setdefault("deadline", "realtime")
                options.setdefault("cpu-used", "8")
                if crf is not None:
                    options["b"] = "0"  # constant quality mode
            if options:
                stream.options = options
            if gop is not None:
                stream.codec_context.gop_size = gop
            if rotation:
                stream.set_display_rotation(rotation)
            astream = None
            if audio is not None:
                astream = out.add_stream(_first_available(acodecs, av.codecs_available), rate=int(audio[1]))
                astream.layout = "mono"
            for arr in _chain(first, it):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr, dtype=np.uint8), format="rgb24")
                out.mux(stream.encode(frame))
            out.mux(stream.encode())
            if astream is not None and audio is not None:
                _write_audio(out, astream, audio[0], int(audio[1]))

    return atomic_write(path, write)


def _write_audio(out: Any, stream: Any, samples: np.ndarray, rate: int) -> None:
    import av

    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    chunk = stream.codec_context.frame_size or 1024
    for i in range(0, len(samples), chunk):
        part = samples[i : i + chunk]
        frame = av.AudioFrame.from_ndarray(part[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = i
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest


def _first_available(names: tuple[str, ...], available: set[str]) -> str:
    for name in names:
        if name in available:
            return name
    raise ConfigError(f"none of the codecs {names} is available in this PyAV build", field="codec")
