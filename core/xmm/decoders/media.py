"""Writing decoder outputs to files: images as PNG, waveforms as 16-bit WAV, frame stacks as MP4 (or GIF)."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import numpy as np

from xmm.errors import ShapeError
from xmm.io import atomic_write


def save_image(image: Any, path_stem: str | Path) -> Path:
    """Save a PIL image or an array ``[H, W, C]`` (uint8, or float in [0, 1]) as ``<stem>.png``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(_to_uint8(np.asarray(image)))
    path = Path(f"{path_stem}.png")
    return atomic_write(path, lambda p: image.save(p, format="PNG"))


def save_audio(waveform: Any, path_stem: str | Path, sampling_rate: int) -> Path:
    """Save a mono waveform ``[N]`` (float in [-1, 1]) as ``<stem>.wav``, 16-bit PCM (stdlib ``wave``, no extra)."""
    x = np.asarray(waveform, dtype=np.float32).squeeze()
    if x.ndim != 1:
        raise ShapeError(f"a waveform to save must be 1-D [N], got shape {x.shape}")
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")

    def write(p: Path) -> None:
        with wave.open(str(p), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(int(sampling_rate))
            w.writeframes(pcm.tobytes())

    return atomic_write(Path(f"{path_stem}.wav"), write)


def save_video(frames: Any, path_stem: str | Path, fps: int = 8) -> Path:
    """Save frames ``[F, H, W, C]`` (or a list of PIL images) as ``<stem>.mp4`` with PyAV, or ``<stem>.gif``
    with Pillow when PyAV is not installed."""
    arr = np.stack([np.asarray(f) for f in frames]) if isinstance(frames, (list, tuple)) else np.asarray(frames)
    if arr.ndim != 4:
        raise ShapeError(f"video frames to save must be [F, H, W, C], got shape {arr.shape}")
    arr = _to_uint8(arr)
    try:
        import av
    except ImportError:
        return _save_gif(arr, path_stem, fps)

    def write(p: Path) -> None:
        # H.264 needs even sizes; pad by one pixel row/column where needed
        h, w = arr.shape[1] + arr.shape[1] % 2, arr.shape[2] + arr.shape[2] % 2
        padded = np.zeros((arr.shape[0], h, w, 3), dtype=np.uint8)
        padded[:, : arr.shape[1], : arr.shape[2]] = arr[..., :3] if arr.shape[-1] >= 3 else np.repeat(arr, 3, -1)
        with av.open(str(p), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            for frame in padded:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write(Path(f"{path_stem}.mp4"), write)


def _save_gif(arr: np.ndarray, path_stem: str | Path, fps: int) -> Path:
    from PIL import Image

    images = [Image.fromarray(f[..., :3] if f.shape[-1] >= 3 else f[..., 0]) for f in arr]
    duration = max(1, round(1000 / fps))
    return atomic_write(
        Path(f"{path_stem}.gif"),
        lambda p: images[0].save(p, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0),
    )


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    # diffusers returns float frames/images in [0, 1]
    return (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
