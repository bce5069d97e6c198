"""Fixtures for xmm-plugin-image's tests: real photos from scikit-image, files written in tmp dirs, the real encoder."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """Real photos shipped inside scikit-image (no download): uint8 arrays."""
    data = pytest.importorskip("skimage.data")
    return {name: getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "camera")}


@pytest.fixture(scope="session")
def effnet():
    """The real EfficientNet-Lite0 (packaged ImageNet weights), built once for the session."""
    from xmm_plugin_image.encoders.efficientnet import EfficientNetLiteEncoder

    return EfficientNetLiteEncoder()


@pytest.fixture
def image_files(tmp_path: Path, photos: dict[str, np.ndarray]) -> dict[str, Path]:
    """The astronaut photo saved as PNG, JPEG and WebP, plus bad inputs: truncated JPEG, text named .png, empty file."""
    img = Image.fromarray(photos["astronaut"]).resize((128, 128))
    out: dict[str, Path] = {}
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")):
        out[ext] = tmp_path / f"astronaut.{ext}"
        img.save(out[ext], format=fmt, **({} if fmt == "PNG" else {"quality": 95}))
    jpeg = out["jpg"].read_bytes()
    out["truncated"] = tmp_path / "truncated.jpg"
    out["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    out["text"] = tmp_path / "notes.png"
    out["text"].write_text("this is a text file, not a picture\n")
    out["empty"] = tmp_path / "empty.png"
    out["empty"].write_bytes(b"")
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (8-bit grey) but which has no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def make_png_header():
    return png_header_only
