"""Sampling frames from a video with PyAV, without decoding (or holding) the whole file.

:func:`load_video` picks ``num_frames`` sample times in a ``[start, end]`` window - the centres of equal segments
(``uniform``) or every ``1/fps`` seconds (``fps``) - and decodes only around them: it seeks to the keyframe before
each sample time when that keyframe lies ahead of what has been decoded (from the container's keyframe index, or,
without one, when the next sample is more than ``seek_gap`` seconds ahead), decodes forward to the nearest frame and
keeps only that frame as an RGB image. When seeking fails or lands after the target, it falls back to one
sequential pass. The display matrix (phone videos) is applied, so frames come out the way a player shows them.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from xmm.errors import (
    ConfigError,
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    MissingDependencyError,
)
from xmm.limits import check_file, max_file_bytes

log = logging.getLogger(__name__)

MODALITY = "video"
# largest decoded frame (8K UHD); a bigger stream is refused from its header before any frame is decoded, so that a
# few sampled frames cannot take gigabytes
MAX_FRAME_PIXELS = 7680 * 4320


class VideoDecodeConfig(BaseModel):
    """How frames are sampled from a video (user-facing; ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_frames: int = Field(default=8, ge=1, le=4096, description="frames to sample (the most, with sampling=fps)")
    sampling: Literal["uniform", "fps"] = Field(default="uniform", description="segment centres, or every 1/fps s")
    fps: float | None = Field(default=None, gt=0, description="sample rate for sampling=fps")
    start: float | None = Field(default=None, ge=0, description="trim: seconds from the start of the video")
    end: float | None = Field(default=None, gt=0, description="trim: end time in seconds (default: the end)")
    seek: bool = Field(default=True, description="seek to sample times instead of decoding everything before them")
    seek_gap: float = Field(default=2.0, ge=0, description="without a keyframe index: seek when the next sample is this far ahead")
    max_side: int | None = Field(default=None, ge=16, description="downscale frames so the longer side is at most this")
    apply_rotation: bool = Field(default=True, description="rotate frames by the stream's display matrix")

    @model_validator(mode="after")
    def _check(self) -> VideoDecodeConfig:
        if self.sampling == "fps" and self.fps is None:
            raise ValueError("sampling='fps' needs fps (frames per second to sample)")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


@dataclass
class VideoClip:
    """Frames sampled from a video: RGB images in display orientation, with their times in seconds.

    ``timestamps[i]`` is the time of ``frames[i]`` from the start of the video; ``decoded_frames`` and ``seeks``
    say how much work sampling took (a 10-minute file sampled at 8 points decodes a few GOPs, not the whole file).
    """

    frames: list[Image.Image]
    timestamps: list[float]
    duration: float | None = None
    fps: float | None = None
    rotation: int = 0
    source: str | None = None
    window: tuple[float, float] | None = None
    decoded_frames: int = 0
    seeks: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class _StreamInfo:
    start: float  # stream start time in seconds (frame times are relative to it)
    duration: float | None
    fps: float | None
    keyframes: list[float]  # keyframe times relative to start, sorted; empty when the container has no index


def load_video(raw: Any, config: VideoDecodeConfig | None = None) -> VideoClip:
    """Sample frames from ``raw``: a path, encoded bytes, a :class:`VideoClip` (returned as is) or a sequence of
    frames (PIL images / ``[H, W, 3]`` arrays, sub-sampled to ``num_frames``).

    Raises :class:`EmptyMediaError` (no video stream, no decodable frame, nothing in the trim window),
    :class:`CorruptMediaError` (not a video or undecodable) or :class:`MediaError` (missing file), naming the input.
    """
    cfg = config or VideoDecodeConfig()
    if isinstance(raw, VideoClip):
        return raw
    if isinstance(raw, (str, Path)):
        path = Path(raw)
        # stat first: a directory, FIFO, device or an over-limit file is refused without being opened
        if check_file(path, modality=MODALITY, what="video file").st_size == 0:
            raise EmptyMediaError("file is empty (0 bytes)", source=raw, modality=MODALITY)
        return _decode(str(path), raw, cfg)
    if isinstance(raw, (bytes, bytearray, memoryview)):
        if len(raw) == 0:
            raise EmptyMediaError("no data (0 bytes)", source=raw, modality=MODALITY)
        if len(raw) > max_file_bytes(MODALITY):
            raise MediaTooLargeError(f"is {len(raw):,} bytes, over the limit of {max_file_bytes(MODALITY):,}",
                                     source=raw, modality=MODALITY)
        return _decode(io.BytesIO(bytes(raw)), raw, cfg)
    if isinstance(raw, Sequence) and not isinstance(raw, str) and raw and all(isinstance(f, (Image.Image, np.ndarray)) for f in raw):
        return _from_frames(list(raw), cfg)
    raise MediaError(
        f"unsupported video input {type(raw).__name__}; pass a path, bytes, a VideoClip or a list of frames",
        source=raw,
        modality=MODALITY,
    )


def video_fingerprint(raw: Any, config: VideoDecodeConfig | None = None) -> str:
    """sha256 of the input's content *and* the sampling config (which frames get encoded depends on both)."""
    from xmm_plugin_image.loading import image_fingerprint

    cfg = config or VideoDecodeConfig()
    h = hashlib.sha256(b"xmm-video\0")
    h.update(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    if isinstance(raw, VideoClip):
        for frame, t in zip(raw.frames, raw.timestamps):
            h.update(f"{t:.6f}:{image_fingerprint(frame)}\n".encode())
    elif isinstance(raw, Sequence) and not isinstance(raw, (str, bytes, bytearray)):
        for frame in raw:
            h.update(f"{image_fingerprint(frame)}\n".encode())
    else:
        from xmm.modality import default_fingerprint

        h.update(default_fingerprint(raw, modality=MODALITY).encode())
    return h.hexdigest()


def sample_times(cfg: VideoDecodeConfig, duration: float, *, source: Any = None) -> tuple[tuple[float, float], list[float]]:
    """The trim window ``(a, b)`` and the sample times in it (seconds from the start of the video, ascending)."""
    a = min(cfg.start or 0.0, duration)
    b = min(cfg.end, duration) if cfg.end is not None else duration
    if b <= a:
        raise EmptyMediaError(
            f"the trim window [{cfg.start or 0.0:g} s, {cfg.end if cfg.end is not None else duration:g} s] holds nothing: "
            f"the video lasts {duration:.3f} s",
            source=source,
            modality=MODALITY,
        )
    if cfg.sampling == "uniform":
        step = (b - a) / cfg.num_frames
        return (a, b), [a + (i + 0.5) * step for i in range(cfg.num_frames)]
    assert cfg.fps is not None  # checked by the config validator
    count = max(1, min(cfg.num_frames, math.ceil((b - a) * cfg.fps - 1e-9)))
    return (a, b), [a + k / cfg.fps for k in range(count)]


# -- decoding ------------------------------------------------------------------------------------------------------
def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is a dependency of this plugin
        raise MissingDependencyError("av", command="pip install av", purpose="decoding video") from e
    return av


def _open(src: Any, source: Any) -> Any:
    av = _av()
    if isinstance(src, io.BytesIO):
        src.seek(0)
    try:
        return av.open(src, mode="r")
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"not a readable video container: {e}", source=source, modality=MODALITY) from e


def _decode(src: Any, source: Any, cfg: VideoDecodeConfig) -> VideoClip:
    av = _av()
    container = _open(src, source)
    try:
        if not container.streams.video:
            kinds = ", ".join(f"{s.type} ({s.codec_context.name})" for s in container.streams) or "none"
            raise EmptyMediaError(f"has no video stream (streams: {kinds})", source=source, modality=MODALITY)
        _check_frame_size(container.streams.video[0].codec_context, source)
        info = _stream_info(container, container.streams.video[0])
        if info.duration is None:
            raise EmptyMediaError("has a video stream without any timed packet", source=source, modality=MODALITY)
        window, targets = sample_times(cfg, info.duration, source=source)
        dec = _Decoder(container, info)
        picked = None
        if cfg.seek:
            try:
                picked = dec.sample_seeking(targets, cfg.seek_gap)
            except av.error.FFmpegError as e:
                log.info("seeking in %s failed (%s); decoding sequentially", _name(source), e)
        if picked is None:  # seeking off, failed or unreliable: one pass from the start
            container.close()
            container = _open(src, source)
            seeks = dec.seeks
            dec = _Decoder(container, info, decoded=dec.decoded, failed=dec.failed)
            dec.seeks = seeks
            picked = dec.sample_sequential(targets)
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"cannot decode video: {e}", source=source, modality=MODALITY) from e
    finally:
        container.close()
    if not picked:
        if dec.failed:
            raise CorruptMediaError(f"no frame could be decoded ({dec.failed} damaged packets)", source=source, modality=MODALITY)
        raise EmptyMediaError("has no decodable video frame", source=source, modality=MODALITY)
    frames = [_to_image(f, cfg) for _, f in picked]
    rotation = _rotation(picked[0][1]) if cfg.apply_rotation else 0
    if rotation:
        frames = [_rotate(img, rotation) for img in frames]
    return VideoClip(frames=frames, timestamps=[t for t, _ in picked], duration=info.duration, fps=info.fps,
                     rotation=rotation, source=_name(source), window=window, decoded_frames=dec.decoded, seeks=dec.seeks,
                     meta={"damaged_packets": dec.failed} if dec.failed else {})


def _stream_info(container: Any, stream: Any) -> _StreamInfo:
    tb = float(stream.time_base) if stream.time_base else 1e-6
    start = stream.start_time * tb if stream.start_time is not None else 0.0
    fps = float(stream.average_rate or stream.guessed_rate or 0) or None
    if stream.duration:
        duration: float | None = stream.duration * tb
    elif container.duration:
        duration = container.duration / 1_000_000 - max(0.0, start - (container.start_time or 0) / 1_000_000)
    else:
        duration = _scan_duration(container, stream, start)
    return _StreamInfo(start=start, duration=duration if duration and duration > 0 else None, fps=fps,
                       keyframes=_keyframes(stream, start))


def _keyframes(stream: Any, start: float) -> list[float]:
    """Keyframe times from the demuxer's index (MP4/MOV: complete at open; Matroska/WebM: filled from the cues on
    the first seek). A single entry says nothing about the rest of the file, so it counts as no index."""
    tb = float(stream.time_base)
    try:
        keyframes = sorted({e.timestamp * tb - start for e in stream.index_entries if e.is_keyframe})
    except (AttributeError, TypeError):  # older PyAV, or a demuxer without an index
        return []
    return keyframes if len(keyframes) >= 2 else []


def _scan_duration(container: Any, stream: Any, start: float) -> float | None:
    """Duration from the packets' timestamps (demuxing only, no decoding); the container is rewound after."""
    tb = float(stream.time_base)
    last = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            end = (packet.pts + (packet.duration or 0)) * tb
            last = end if last is None else max(last, end)
    container.seek(0)
    return None if last is None else last - start


_Timed = tuple[float, Any]  # (seconds from the start of the video, av.VideoFrame)


class _Decoder:
    """Walks one video stream forward, holding at most two decoded frames, and picks the nearest frame per target."""

    MAX_SEEK_TRIES = 3

    def __init__(self, container: Any, info: _StreamInfo, *, decoded: int = 0, failed: int = 0) -> None:
        self.container = container
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame-threaded decoding; frames still come out in presentation order
        self.tb = float(self.stream.time_base)
        self.info = info
        self.decoded, self.failed, self.seeks = decoded, failed, 0
        self._it: Iterator[Any] | None = None
        self.prev: _Timed | None = None
        self.cur: _Timed | None = None
        self.exhausted = False

    # -- strategies -------------------------------------------------------------------------------------------------
    def sample_seeking(self, targets: list[float], gap: float) -> list[_Timed] | None:
        """Seek where it skips frames, decode forward otherwise. ``None`` when seeking proved unreliable."""
        picked: list[_Timed] = []
        for t in targets:
            if self._it is None or self._should_seek(t, gap):
                if not self._seek_before(t):
                    return None
            self._advance_to(t)
            best = _nearest(t, self.prev, self.cur)
            if best is not None:
                picked.append(best)
        return picked

    def sample_sequential(self, targets: list[float]) -> list[_Timed]:
        """One pass from the start."""
        self._restart()
        picked: list[_Timed] = []
        for t in targets:
            self._advance_to(t)
            best = _nearest(t, self.prev, self.cur)
            if best is not None:
                picked.append(best)
        return picked

    # -- moves ------------------------------------------------------------------------------------------------------
    def _seek_before(self, t: float) -> bool:
        """Seek to the keyframe at or before ``t`` (FFmpeg's backward seek on presentation time) and decode its first
        frame; retry earlier when it lands after ``t``; False when every try does."""
        tol = 2.5 / self.info.fps if self.info.fps else 0.1
        aim = t
        for _ in range(self.MAX_SEEK_TRIES):
            offset = max(0, math.floor((aim + self.info.start) / self.tb))
            self.container.seek(offset, stream=self.stream, backward=True, any_frame=False)
            self.seeks += 1
            if not self.info.keyframes:  # a Matroska index appears once seeking has read the cues
                self.info.keyframes = _keyframes(self.stream, self.info.start)
            self._restart(rewind=False)
            if self.cur is not None and self.cur[0] <= t + tol:
                return True
            if self.cur is None or aim <= 0:
                return False
            aim -= max(1.0, 2 * (self.cur[0] - aim))
        return False

    def _restart(self, rewind: bool = True) -> None:
        if rewind and self._it is not None:
            self.container.seek(0)
        self._it = self._frames()
        self.prev, self.exhausted = None, False
        self.cur = self._next()

    def _advance_to(self, t: float) -> None:
        while not self.exhausted and self.cur is not None and self.cur[0] < t:
            nxt = self._next()
            if nxt is None:
                self.exhausted = True
                break
            self.prev, self.cur = self.cur, nxt

    def _should_seek(self, t: float, gap: float) -> bool:
        """Seek only when it skips frames: the keyframe before ``t`` lies ahead of the decoded position (index
        timestamps can be decode times, a frame or two early; that only makes this a little eager)."""
        if self.cur is None:
            return not self.exhausted
        if self.info.keyframes:
            return _keyframe_before(t, self.info) > self.cur[0] + 1e-6
        return t - self.cur[0] > gap

    def _next(self) -> _Timed | None:
        assert self._it is not None
        frame = next(self._it, None)
        if frame is None:
            return None
        self.decoded += 1
        return _frame_time(frame, self.info, self.decoded), frame

    def _frames(self) -> Iterator[Any]:
        """Decoded frames; a packet that fails to decode is counted and skipped (one damaged GOP must not lose
        the whole video)."""
        av = _av()
        for packet in self.container.demux(self.stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError as e:
                self.failed += 1
                log.debug("skipping an undecodable packet at pts %s: %s", packet.pts, e)


def _frame_time(frame: Any, info: _StreamInfo, index: int) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base) - info.start
    if frame.dts is not None and frame.time_base is not None:
        return float(frame.dts * frame.time_base) - info.start
    return index / (info.fps or 25.0)


def _nearest(t: float, prev: _Timed | None, cur: _Timed | None) -> _Timed | None:
    if prev is None:
        return cur
    if cur is None:
        return prev
    return prev if abs(prev[0] - t) <= abs(cur[0] - t) else cur


def _keyframe_before(t: float, info: _StreamInfo) -> float:
    if not info.keyframes:
        return max(t, 0.0)
    i = bisect.bisect_right(info.keyframes, t + 1e-6) - 1
    return info.keyframes[max(i, 0)]


def _check_frame_size(codec: Any, source: Any) -> None:
    w, h = int(codec.width or 0), int(codec.height or 0)
    if w * h > MAX_FRAME_PIXELS:
        raise MediaTooLargeError(f"frames are {w}x{h} = {w * h:,} pixels, over the limit of {MAX_FRAME_PIXELS:,}",
                                 source=source, modality=MODALITY)


def _to_image(frame: Any, cfg: VideoDecodeConfig) -> Image.Image:
    w, h = frame.width, frame.height
    _check_frame_size(frame, None)  # a stream may change size mid-way
    if cfg.max_side and max(w, h) > cfg.max_side:
        scale = cfg.max_side / max(w, h)
        # scale in the decoder's own colour space (cheaper than converting full size to RGB first)
        return frame.to_image(width=max(2, round(w * scale)), height=max(2, round(h * scale)))
    return frame.to_image()


def _rotation(frame: Any) -> int:
    try:
        return int(round(frame.rotation or 0)) % 360
    except (AttributeError, TypeError, ValueError):  # no display matrix
        return 0


def _rotate(img: Image.Image, ccw_degrees: int) -> Image.Image:
    """Rotate counter-clockwise by the display matrix's angle (what a player does)."""
    exact = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    if ccw_degrees in exact:
        return img.transpose(exact[ccw_degrees])
    return img.rotate(ccw_degrees, expand=True, resample=Image.Resampling.BICUBIC)


def _from_frames(frames: list[Any], cfg: VideoDecodeConfig) -> VideoClip:
    from xmm_plugin_image.loading import load_image

    n = len(frames)
    if n > cfg.num_frames:
        idx = [min(n - 1, int((i + 0.5) * n / cfg.num_frames)) for i in range(cfg.num_frames)]
    else:
        idx = list(range(n))
    images = [load_image(frames[i]) for i in idx]
    if cfg.max_side:
        for img in images:
            img.thumbnail((cfg.max_side, cfg.max_side))
    return VideoClip(frames=images, timestamps=[float(i) for i in idx], source=f"<{n} frames>", meta={"from_frames": True})


def _name(source: Any) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return f"<{type(source).__name__}>"


def check_config(data: dict[str, Any]) -> VideoDecodeConfig:
    """Validate a dict into :class:`VideoDecodeConfig`; errors name the field (as ``xmm.bridges.base.validate_config``
    does, without importing torch: loading runs in data-loader workers and in ``xmm plugins``)."""
    from pydantic import ValidationError

    try:
        return VideoDecodeConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or None
        raise ConfigError(err["msg"], field=loc) from e
