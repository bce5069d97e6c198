"""The ``image`` modality: placeholder ``<image>``, Pillow loading, EfficientNet-Lite0 + a 32-query Q-Former by default."""

from __future__ import annotations

from functools import partial
from typing import Any

from xmm.modality import ModalitySpec

from xmm_plugin_image.loading import ImageLoadConfig, default_load_config, image_fingerprint, load_image

NAME = "image"
PLACEHOLDER = "<image>"
DEFAULT_ENCODER = "efficientnet-lite0"
# BLIP-2 / X-LLM: a Q-Former with 32 queries (field names of xmm.bridges.qformer.QFormerConfig)
DEFAULT_BRIDGE = {"type": "qformer", "num_queries": 32}
FILE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def image_spec(load_config: ImageLoadConfig | None = None, **overrides: Any) -> ModalitySpec:
    """The ``image`` spec. ``load_config`` defaults to :func:`default_load_config` (``$XMM_IMAGE_MAX_PIXELS``)."""
    cfg = load_config or default_load_config()
    fields: dict[str, Any] = {
        "name": NAME,
        "placeholder": PLACEHOLDER,
        "load": partial(load_image, config=cfg),
        "encoder": DEFAULT_ENCODER,
        "bridge": dict(DEFAULT_BRIDGE),
        "file_extensions": FILE_EXTENSIONS,
        "description": "still images (PNG/JPEG/WebP/...; PIL images and arrays in memory), EXIF-oriented, 8-bit RGB",
        "fingerprint": image_fingerprint,
    }
    fields.update(overrides)
    return ModalitySpec(**fields)
