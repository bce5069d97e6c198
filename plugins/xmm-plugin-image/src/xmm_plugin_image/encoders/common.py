"""Pieces shared by the image encoders: layer selection, resizing, normalisation, token layout, weight hashes."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from xmm.errors import ConfigError, MediaError, ShapeError

# which hidden layer to take: "last", "penultimate" (LLaVA's select_layer=-2) or an index into the model's layers
LayerChoice = Literal["last", "penultimate"] | int
ResizeMode = Literal["pad", "squash", "center_crop"]


def as_rgb_image(item: Any) -> Image.Image:
    """The loaded item the image encoders accept: a PIL image (converted to RGB when it is not)."""
    from xmm_plugin_image.loading import to_rgb

    if not isinstance(item, Image.Image):
        raise MediaError(
            f"image encoders take a loaded PIL image (from the image modality's load()), got {type(item).__name__}",
            source=item,
            modality="image",
        )
    return to_rgb(item)


# the largest intermediate canvas side (pixels) resizing may build; a longer side is scaled down first, so that a
# 100000x1 image cannot make a 100000^2 canvas (ordinary photos stay below it and are resized exactly as before)
MAX_CANVAS_SIDE = 4096


def resize_square(img: Image.Image, size: int, mode: ResizeMode, *, fill: tuple[int, int, int], crop_pct: float) -> Image.Image:
    """Resize an RGB image to ``size x size``.

    ``pad``: keep the aspect ratio and pad the short side with ``fill`` (LLaVA-1.5's "pad" aspect; nothing is cut
    off, which matters for questions about the image's edges). ``squash``: resize both sides. ``center_crop``:
    resize the short side to ``size / crop_pct`` and cut the centre (the ImageNet evaluation protocol). No
    intermediate image is larger than ``MAX_CANVAS_SIDE`` squared, whatever the input's aspect ratio.
    """
    w, h = img.size
    if mode == "squash":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if mode == "pad":
        if w == h:
            return img.resize((size, size), Image.Resampling.BICUBIC) if w != size else img
        side = max(w, h)
        if side > MAX_CANVAS_SIDE:
            scale = MAX_CANVAS_SIDE / side
            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
            w, h = img.size
            side = max(w, h)
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        return canvas.resize((size, size), Image.Resampling.BICUBIC)
    short = round(size / crop_pct)
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if max(nw, nh) > MAX_CANVAS_SIDE:
        # resample only the centre crop, mapped back to the input's coordinates (no huge intermediate)
        sx, sy = w / nw, h / nh
        return img.resize((size, size), Image.Resampling.BICUBIC,
                          box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    return img.crop((left, top, left + size, top + size))


def to_normalised_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """RGB PIL image -> float32 ``[3, H, W]``, ``(x / 255 - mean) / std``."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return ((x - m) / s).contiguous()


def spatial_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]`` (row-major over the grid); ``[B, T, C]`` passes through."""
    if x.dim() == 4:
        return x.flatten(2).transpose(1, 2)
    if x.dim() == 3:
        return x
    raise ShapeError(f"expected encoder features [B, C, H, W] or [B, T, C], got {tuple(x.shape)}")


def resolve_layer(layer: LayerChoice, num_layers: int, *, field: str = "layer") -> int:
    """A layer choice -> a non-negative index into ``num_layers`` outputs (``last`` = num_layers - 1)."""
    if layer == "last":
        return num_layers - 1
    if layer == "penultimate":
        if num_layers < 2:
            raise ConfigError(f"the model has {num_layers} layer output(s); there is no penultimate layer", field=field)
        return num_layers - 2
    idx = layer + num_layers if layer < 0 else layer
    if not 0 <= idx < num_layers:
        raise ConfigError(f"layer {layer} is out of range for a model with {num_layers} layer outputs", field=field)
    return idx


def full_mask(features: torch.Tensor) -> torch.Tensor:
    """All-True ``[B, T]`` mask for ``features [B, T, D]`` (image encoders never pad)."""
    return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)


_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, computed once per process (keyed by path, size and mtime)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASHES[key] = digest
    return digest


def probe_output_dim(encoder: torch.nn.Module, example: dict[str, torch.Tensor]) -> int:
    """Run one example through ``encoder.forward`` (no grad) and return D of its ``[1, T, D]`` features."""
    with torch.no_grad():
        out = encoder(**{k: v.unsqueeze(0) for k, v in example.items()})
    return int(out.features.shape[-1])
