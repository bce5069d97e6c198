"""The media loaders of the data tests' in-process plugin. They live in a uniquely named module, not in conftest.py:
loader workers pickle them by module name, and "conftest" names whichever conftest was imported last."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from xmm.errors import CorruptMediaError, MediaError


def load_image(raw: Any) -> np.ndarray:
    """path / bytes / PIL image -> float32 [H, W, 3]."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = raw if isinstance(raw, Image.Image) else Image.open(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise CorruptMediaError(f"not an image: {e}", modality="image") from e


def load_audio(raw: Any) -> np.ndarray:
    """.npy path / bytes or a 1-D array -> float32 samples."""
    try:
        arr = raw if isinstance(raw, np.ndarray) else np.load(io.BytesIO(raw) if isinstance(raw, bytes) else raw)
    except (ValueError, OSError) as e:
        raise CorruptMediaError(f"not a .npy array: {e}", modality="audio") from e
    if arr.ndim != 1 or arr.size < 4:
        raise CorruptMediaError(f"needs >= 4 samples, got shape {arr.shape}", modality="audio")
    return arr.astype(np.float32)


def load_device(raw: Any) -> list[float]:
    """``{"status": [4 numbers]}`` as a dict, JSON bytes or a .json path -> 4 floats."""
    if isinstance(raw, (str, Path)):
        raw = Path(raw).read_bytes()
    if isinstance(raw, bytes):
        try:
            raw = json.loads(raw)
        except ValueError as e:
            raise CorruptMediaError(f"not JSON: {e}", modality="device") from e
    status = raw.get("status") if isinstance(raw, dict) else None
    if not (isinstance(status, list) and len(status) == 4):
        raise MediaError("device status must be {'status': [4 numbers]}", modality="device")
    return [float(v) for v in status]
