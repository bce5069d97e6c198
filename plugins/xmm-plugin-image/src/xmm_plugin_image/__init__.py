"""xmm-plugin-image: the ``<image>`` modality for xmm (loading, EfficientNet-Lite0 / timm / transformers encoders,
a synthetic shapes dataset for the demo)."""

from __future__ import annotations

from xmm_plugin_image.loading import ImageLoadConfig, image_fingerprint, load_image, to_rgb

__version__ = "0.1.0"

__all__ = ["ImageLoadConfig", "__version__", "image_fingerprint", "load_image", "to_rgb"]
