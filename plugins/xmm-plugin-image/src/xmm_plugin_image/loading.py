"""Loading images from a path, bytes, a PIL image or a numpy array into an 8-bit RGB ``PIL.Image``.

What :func:`load_image` guarantees: EXIF orientation applied, any mode (RGBA, palette, greyscale, 16-bit, float,
CMYK) converted to 8-bit RGB with transparency composited onto a background, the pixel count checked against a
configurable limit *before* the pixels are decoded (decompression bombs), and every failure raised as an
:class:`xmm.errors.MediaError` subclass that names the input.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from xmm.errors import ConfigError, CorruptMediaError, EmptyMediaError, MediaError, MediaTooLargeError
from xmm.limits import read_file
from xmm.modality import default_fingerprint

log = logging.getLogger(__name__)

MODALITY = "image"
# ~120 megapixels: a 108 MP phone photo passes, and it stays below Pillow's own hard limit (2 x 89.5 MP), so the
# limit that applies is always this one. Decoded as RGB that is ~360 MB.
DEFAULT_MAX_PIXELS = 120_000_000
MAX_PIXELS_ENV = "XMM_IMAGE_MAX_PIXELS"
_EXIF_ORIENTATION = 0x0112


class ImageLoadConfig(BaseModel):
    """How raw images are loaded (user-facing; ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, gt=0, description="refuse images with more pixels (w*h)")
    background: tuple[int, int, int] = Field(default=(255, 255, 255), description="RGB behind transparent pixels")
    exif_transpose: bool = Field(default=True, description="apply the EXIF orientation tag")


def default_load_config() -> ImageLoadConfig:
    """The defaults, with ``max_pixels`` taken from ``$XMM_IMAGE_MAX_PIXELS`` when set."""
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not env:
        return ImageLoadConfig()
    try:
        value = int(env)
    except ValueError:
        value = -1
    try:
        return ImageLoadConfig(max_pixels=value)
    except ValidationError as e:  # not xmm.bridges.base.validate_config: loading must not import torch
        raise ConfigError(f"must be a positive integer, got {env!r}", field="max_pixels", source=f"${MAX_PIXELS_ENV}") from e


def load_image(raw: Any, config: ImageLoadConfig | None = None) -> Image.Image:
    """Load ``raw`` (path, bytes, ``PIL.Image`` or ``ndarray`` [H, W] / [H, W, C]) as a new 8-bit RGB image.

    Raises :class:`MediaTooLargeError` (more than ``max_pixels``), :class:`EmptyMediaError` (zero-byte input),
    :class:`CorruptMediaError` (not an image, truncated, undecodable) or :class:`MediaError` (missing file, unsupported
    type), each naming the input.
    """
    cfg = config or default_load_config()
    if isinstance(raw, Image.Image):
        _check_pixels(raw.size, cfg, raw)
        try:
            raw.load()  # an image from Image.open() is decoded lazily: a truncated file fails here
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            raise CorruptMediaError(f"cannot decode the image's pixels (corrupt or truncated): {e}", source=_pil_source(raw),
                                    modality=MODALITY) from e
        img = raw
    elif isinstance(raw, np.ndarray):
        _check_pixels((raw.shape[1], raw.shape[0]) if raw.ndim >= 2 else (0, 0), cfg, raw)
        img = _from_array(raw)
    elif isinstance(raw, (str, Path)):
        return _decode(_read_file(Path(raw)), raw, cfg)
    elif isinstance(raw, (bytes, bytearray, memoryview)):
        if len(raw) == 0:
            raise EmptyMediaError("no data (0 bytes)", source=raw, modality=MODALITY)
        return _decode(bytes(raw), raw, cfg)
    else:
        raise MediaError(
            f"unsupported image input type {type(raw).__name__}; pass a path, bytes, a PIL image or a numpy array",
            source=raw,
            modality=MODALITY,
        )
    return _finish(img, raw, cfg)


def image_fingerprint(raw: Any) -> str:
    """sha256 identifying an image input for the feature cache.

    Paths and bytes hash their bytes (as core's default does); in-memory PIL images hash mode, size, palette,
    EXIF orientation and pixels; arrays hash dtype, shape and data. Equal content gives equal keys.
    """
    if isinstance(raw, Image.Image):
        h = hashlib.sha256(b"xmm-pil-image\0")
        h.update(f"{raw.mode}|{raw.size[0]}x{raw.size[1]}|".encode())
        if raw.mode in ("P", "PA") and raw.palette is not None:
            h.update(raw.palette.tobytes())
        try:
            orientation = raw.getexif().get(_EXIF_ORIENTATION, 1)
        except Exception:  # a malformed EXIF block must not make an image uncacheable
            orientation = 1
        h.update(f"orientation={orientation}|".encode())
        h.update(raw.tobytes())
        return h.hexdigest()
    if isinstance(raw, np.ndarray):
        h = hashlib.sha256(b"xmm-ndarray\0")
        h.update(f"{raw.dtype.str}|{raw.shape}|".encode())
        h.update(np.ascontiguousarray(raw).tobytes())
        return h.hexdigest()
    return default_fingerprint(raw, modality=MODALITY)


# -- internals ----------------------------------------------------------------------------------------------------
def _pil_source(img: Image.Image) -> Any:
    """The file a lazily opened PIL image came from, when known (for error messages)."""
    name = getattr(img, "filename", None) or getattr(getattr(img, "fp", None), "name", None)
    return name if isinstance(name, (str, Path)) and name else img


def _read_file(path: Path) -> bytes:
    # stat first: a directory, FIFO, device or an over-limit file is refused without being opened or read
    data = read_file(path, modality=MODALITY, what="image file")
    if not data:
        raise EmptyMediaError("file is empty (0 bytes)", source=path, modality=MODALITY)
    return data


def _decode(data: bytes, source: Any, cfg: ImageLoadConfig) -> Image.Image:
    with warnings.catch_warnings():
        # the pixel limit is ours (checked below from the header, before decoding); Pillow's warning is noise
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise MediaTooLargeError(
                f"image is larger than Pillow's hard limit ({e}); raise PIL.Image.MAX_IMAGE_PIXELS as well as "
                f"max_pixels to load it",
                source=source,
                modality=MODALITY,
            ) from e
        except UnidentifiedImageError as e:
            raise CorruptMediaError(
                f"not a recognised image format ({len(data)} bytes)",
                source=source,
                modality=MODALITY,
            ) from e
        except (OSError, SyntaxError, ValueError) as e:
            raise CorruptMediaError(f"cannot read image header: {e}", source=source, modality=MODALITY) from e
        _check_pixels(img.size, cfg, source)
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
            # truncated files raise OSError("image file is truncated ..."); broken codecs raise the others
            raise CorruptMediaError(
                f"cannot decode {img.format or 'image'} data (corrupt or truncated): {e}", source=source, modality=MODALITY
            ) from e
    return _finish(img, source, cfg)


def _check_pixels(size: tuple[int, int], cfg: ImageLoadConfig, source: Any) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise EmptyMediaError(f"image has no pixels (size {w}x{h})", source=source, modality=MODALITY)
    if w * h > cfg.max_pixels:
        raise MediaTooLargeError(
            f"image is {w}x{h} = {w * h:,} pixels, over the limit of {cfg.max_pixels:,} "
            f"(max_pixels / ${MAX_PIXELS_ENV}); refusing to decode it (decompression-bomb guard)",
            source=source,
            modality=MODALITY,
        )


def _finish(img: Image.Image, source: Any, cfg: ImageLoadConfig) -> Image.Image:
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: the first frame
    if cfg.exif_transpose and _orientation(img) != 1:  # exif_transpose copies even an upright image
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # a malformed EXIF block only loses the orientation, not the image
            where = source if isinstance(source, (str, Path)) else type(source).__name__
            log.debug("ignoring the unreadable EXIF orientation of %s: %s", where, e)
    out = to_rgb(img, cfg.background, source=source)
    return out if out is not img else img.copy()


def _orientation(img: Image.Image) -> Any:
    try:
        return img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a malformed EXIF block: exif_transpose below decides (and logs)
        return None


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255), *, source: Any = None) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB.

    Transparency (RGBA, LA, PA, palette or RGB/L with a transparent colour) is composited onto ``background``;
    16-bit greyscale is scaled by 255/65535; 32-bit integer and float images are scaled by their range (see README).
    High-bit and transparent images are converted in strips of rows, so that a 120-megapixel image needs about its
    own size plus the RGB result, not several float64 copies of itself.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16"):
        return _grey_strips(img, lambda a: a * (255.0 / 65535.0))
    if mode == "I":
        lo, hi = _range(img, finite_only=False)
        if lo >= 0 and hi <= 255:
            return _grey_strips(img, lambda a: a)  # 8-bit values stored as int32 (e.g. after ImageOps on "L")
        if lo >= 0 and hi <= 65535:
            return _grey_strips(img, lambda a: a * (255.0 / 65535.0))  # Pillow opens some 16-bit PNG/TIFF as "I"
        return _grey_strips(img, _stretcher(lo, hi))
    if mode == "F":
        lo, hi = _range(img, finite_only=True)
        if lo is not None and lo >= 0 and hi <= 1:
            return _grey_strips(img, lambda a: np.nan_to_num(a) * 255.0)
        lo, hi = _range(img, finite_only=False, nan_to_num=True)
        return _grey_strips(img, lambda a: _stretcher(lo, hi)(np.nan_to_num(a)))
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    try:
        if has_alpha:
            out = Image.new("RGB", img.size)
            for box in _strip_boxes(img.size):
                base = Image.new("RGBA", (box[2] - box[0], box[3] - box[1]), (*background, 255))
                out.paste(Image.alpha_composite(base, img.crop(box).convert("RGBA")).convert("RGB"), box[:2])
            return out
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise MediaError(f"cannot convert image mode '{mode}' to RGB: {e}", source=source, modality=MODALITY) from e


_STRIP_PIXELS = 1 << 20  # pixels per strip: float64 work arrays of ~8 MB


def _strip_boxes(size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    w, h = size
    rows = max(1, _STRIP_PIXELS // max(1, w))
    return [(0, y, w, min(h, y + rows)) for y in range(0, h, rows)]


def _strips(img: Image.Image) -> Any:
    """``(box, float64 [rows, W] array)`` over the rows of a single-band image."""
    for box in _strip_boxes(img.size):
        yield box, np.asarray(img.crop(box), dtype=np.float64)


def _range(img: Image.Image, *, finite_only: bool, nan_to_num: bool = False) -> tuple[Any, Any]:
    """(min, max) of a single-band image's values (over the finite ones with ``finite_only``: None, None when there
    are none); ``nan_to_num`` maps NaN/inf as :func:`numpy.nan_to_num` does first."""
    lo = hi = None
    for _, a in _strips(img):
        if nan_to_num:
            a = np.nan_to_num(a)
        if finite_only:
            a = a[np.isfinite(a)]
            if not a.size:
                continue
        a_lo, a_hi = float(a.min()), float(a.max())
        lo = a_lo if lo is None else min(lo, a_lo)
        hi = a_hi if hi is None else max(hi, a_hi)
    return lo, hi


def _stretcher(lo: float, hi: float) -> Any:
    if hi <= lo:
        return np.zeros_like
    return lambda a: (a - lo) * (255.0 / (hi - lo))


def _grey_strips(img: Image.Image, scale: Any) -> Image.Image:
    """A single-band image mapped to 8-bit grey strip by strip (``scale``: float64 values -> 0..255), as RGB."""
    grey = np.empty((img.size[1], img.size[0]), dtype=np.uint8)
    for (_, top, _, bottom), a in _strips(img):
        grey[top:bottom] = np.clip(np.rint(scale(a)), 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _stretch(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) * (255.0 / (hi - lo))


def _from_array(arr: np.ndarray) -> Image.Image:
    """[H, W] or [H, W, C] (C in 1, 3, 4) arrays of uint8, uint16, bool, int or float -> PIL image."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise MediaError(
            f"array of shape {arr.shape} is not an image; expected [H, W], [H, W, 3] or [H, W, 4]",
            source=arr,
            modality=MODALITY,
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.rint(arr.astype(np.float64) * (255.0 / 65535.0))
    elif np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        scale = 255.0 if finite.size and finite.min() >= 0 and finite.max() <= 1 else None
        arr = np.nan_to_num(arr) * scale if scale else _stretch(np.nan_to_num(arr.astype(np.float64)))
    elif arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if arr.min() < 0 or arr.max() > 255:
            arr = _stretch(arr)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr)
