"""Handing a video's audio track to the ``audio`` modality (when xmm-plugin-audio is installed).

:func:`extract_audio` decodes and resamples the track with PyAV; :func:`audio_item` passes
``(samples, sample_rate)`` to the registered ``audio`` modality's ``load`` so the result can go through the audio
encoder next to the video's frames (ChatBridge feeds both streams of a clip).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError, MissingDependencyError

MODALITY = "video"


def extract_audio(
    raw: str | Path | bytes,
    *,
    sample_rate: int = 16_000,
    start: float | None = None,
    end: float | None = None,
    max_seconds: float = 3600.0,
) -> tuple[np.ndarray, int]:
    """A video's first audio track as mono float32 samples ``[N]`` at ``sample_rate``, trimmed to ``[start, end]`` s.

    Raises :class:`EmptyMediaError` when the file has no audio track (or it decodes to nothing),
    :class:`CorruptMediaError` when it cannot be read, :class:`MediaTooLargeError` past ``max_seconds``.
    """
    import av

    src: Any = io.BytesIO(bytes(raw)) if isinstance(raw, (bytes, bytearray, memoryview)) else str(raw)
    if isinstance(src, str) and not Path(src).is_file():
        raise MediaError("file not found", source=raw, modality=MODALITY)
    try:
        container = av.open(src, mode="r")
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"not a readable container: {e}", source=raw, modality=MODALITY) from e
    try:
        if not container.streams.audio:
            raise EmptyMediaError("has no audio track", source=raw, modality=MODALITY)
        stream = container.streams.audio[0]
        if start:
            container.seek(int(start / float(stream.time_base)), stream=stream, backward=True)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        t0: float | None = None
        limit = int(max_seconds * sample_rate)
        total = 0
        for frame in container.decode(stream):
            if t0 is None:
                t0 = float(frame.time or 0.0)
            if end is not None and frame.time is not None and frame.time >= end:
                break
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                total += chunks[-1].size
            if total > limit + sample_rate:
                raise MediaTooLargeError(f"audio track is longer than max_seconds={max_seconds:g}", source=raw, modality=MODALITY)
        for out in resampler.resample(None):  # flush the resampler's delay line
            chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as e:
        raise CorruptMediaError(f"cannot decode the audio track: {e}", source=raw, modality=MODALITY) from e
    finally:
        container.close()
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    # the seek lands on a packet boundary at or before `start`: cut the samples before it, and those after `end`
    if start and t0 is not None and t0 < start:
        samples = samples[int(round((start - t0) * sample_rate)) :]
    if end is not None:
        samples = samples[: max(0, int(round((end - max(start or 0.0, t0 or 0.0)) * sample_rate)))]
    if samples.size == 0:
        raise EmptyMediaError("the audio track holds no samples in the requested range", source=raw, modality=MODALITY)
    return samples, sample_rate


def audio_item(raw: str | Path | bytes, *, modality: str = "audio", registry: Any = None, **kwargs: Any) -> Any:
    """The video's audio track, loaded by the registered ``audio`` modality (its ``load((samples, rate))``).

    Raises :class:`MissingDependencyError` when no such modality is installed.
    """
    if registry is None:
        from xmm.registry import get_registry

        registry = get_registry()
    if modality not in registry.modalities:
        raise MissingDependencyError("xmm-plugin-audio", command="pip install xmm-plugin-audio",
                                     purpose=f"handing a video's audio track to the '{modality}' modality")
    samples, rate = extract_audio(raw, **kwargs)
    return registry.modality(modality).load((samples, rate))
