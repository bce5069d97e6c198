"""Any timm model as an image encoder: features from ``forward_features`` (or an intermediate block), preprocessing
from timm's own data config (input size, interpolation, crop, mean/std)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from xmm.persist import validate_config

from xmm_plugin_image.encoders.common import LayerChoice, as_rgb_image, file_sha256, full_mask, spatial_to_tokens

ENCODER_NAME = "timm"


class TimmEncoderConfig(BaseModel):
    """Config of the ``timm`` encoder (keyword arguments of ``create_encoder("timm", ...)``)."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, description="any name timm.create_model accepts, e.g. vit_base_patch16_224")
    pretrained: bool = Field(default=True, description="download/load timm's pretrained weights (needs the Hub or its cache)")
    checkpoint_path: str | None = Field(default=None, description="a local weights file to load instead")
    layer: LayerChoice = Field(default="last", description="last = forward_features; penultimate / i = block outputs")
    drop_cls: bool = Field(default=False, description="drop prefix tokens (CLS, distillation, registers) of ViT-like models")
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="extra timm.create_model arguments")
    image_size: int | None = Field(default=None, ge=16, description="input side; default: timm's data config (or a ViT's img_size)")
    seed: int = Field(default=0, description="seed for randomly initialised weights, so their features are reproducible")
    share: bool = Field(default=False, description="reuse one frozen instance per config in this process")


class TimmEncoder(Encoder):
    """A timm backbone: ``[B, 3, H, W] -> [B, T, D]`` where a CNN's ``[B, C, h, w]`` map becomes ``h*w`` tokens and
    a ViT's tokens pass through (prefix tokens first unless ``drop_cls``). Frozen."""

    def __init__(self, config: TimmEncoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else validate_config(TimmEncoderConfig, kwargs)
        cfg = self.config
        try:
            import timm
            import timm.data
        except ImportError as e:
            raise MissingDependencyError("timm", command="pip install 'xmm-plugin-image[timm]'", purpose="the timm image encoder") from e
        if not timm.is_model(cfg.model_name):
            raise ConfigError(f"timm has no model named '{cfg.model_name}' (see timm.list_models())", field="model_name")
        pretrained = cfg.pretrained and cfg.checkpoint_path is None
        create_kwargs = dict(cfg.model_kwargs)
        if cfg.checkpoint_path is not None:
            create_kwargs["checkpoint_path"] = cfg.checkpoint_path
        try:
            # a private RNG stream: random-init models get the same weights on every run without touching global state
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                model = timm.create_model(cfg.model_name, pretrained=pretrained, **create_kwargs)
        except (OSError, RuntimeError, ValueError) as e:
            if pretrained:
                raise ModelNotFoundError(
                    f"cannot load pretrained timm weights for '{cfg.model_name}': {e}. Offline, pass pretrained=False "
                    f"(random weights) or checkpoint_path=<local file>."
                ) from e
            raise ConfigError(f"timm cannot build '{cfg.model_name}': {e}", field="model_name") from e
        self.model = model
        self.prefix_tokens = int(getattr(model, "num_prefix_tokens", 0) or 0)
        data_cfg = timm.data.resolve_model_data_config(model)
        side = cfg.image_size or _fixed_input_side(model)
        if side is not None:
            data_cfg["input_size"] = (3, side, side)
        self.data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()}
        self.transform = timm.data.create_transform(**data_cfg, is_training=False)
        self.id = f"timm/{cfg.model_name}"
        self.revision = self._revision(model, pretrained)
        self.freeze()
        size = data_cfg["input_size"]
        try:
            with torch.no_grad():
                probe = self(pixel_values=torch.zeros(1, *size))
        except (AssertionError, IndexError, RuntimeError) as e:  # timm asserts on out-of-range block indices
            raise ConfigError(f"cannot take layer {cfg.layer!r} from '{cfg.model_name}': {e}", field="layer") from e
        self.output_dim = int(probe.features.shape[-1])

    def _revision(self, model: torch.nn.Module, pretrained: bool) -> str:
        cfg = self.config
        if cfg.checkpoint_path is not None:
            return f"sha256:{file_sha256(cfg.checkpoint_path)}"
        if pretrained:
            pc = getattr(model, "pretrained_cfg", {}) or {}
            src = pc.get("hf_hub_id") or pc.get("url") or cfg.model_name
            return f"{src}@{pc.get('tag') or 'default'}"
        return f"random-init-seed{cfg.seed}"

    # -- contract -------------------------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """Loaded PIL image -> ``{"pixel_values": [3, H, W]}`` via timm's eval transform."""
        return {"pixel_values": self.transform(as_rgb_image(raw))}

    def preprocess_config(self) -> dict[str, Any]:
        return {"data_config": self.data_config, "layer": self.config.layer, "drop_cls": self.config.drop_cls}

    def forward(self, pixel_values: torch.Tensor, **_: torch.Tensor) -> EncoderOutput:
        """``pixel_values [B, 3, H, W]`` -> features ``[B, T, D]``, mask all True."""
        layer = self.config.layer
        if layer == "last":
            x = self.model.forward_features(pixel_values)
            if x.dim() == 3 and self.config.drop_cls and self.prefix_tokens:
                x = x[:, self.prefix_tokens :]
            feats = spatial_to_tokens(x)
        else:
            feats = self._intermediate(pixel_values, -2 if layer == "penultimate" else int(layer))
        return EncoderOutput(feats, full_mask(feats))

    def _intermediate(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if not hasattr(self.model, "forward_intermediates"):
            raise ConfigError(f"timm model '{self.config.model_name}' has no forward_intermediates; use layer='last'", field="layer")
        kwargs: dict[str, Any] = {"indices": [index], "intermediates_only": True, "stop_early": True}
        if self.prefix_tokens:
            kwargs["output_fmt"] = "NLC"
            if not self.config.drop_cls:
                kwargs["return_prefix_tokens"] = True
        out = self.model.forward_intermediates(x, **kwargs)[0]
        if isinstance(out, tuple):  # (spatial tokens, prefix tokens)
            spatial, prefix = out
            return torch.cat([prefix, spatial], dim=1)
        return spatial_to_tokens(out)


def _fixed_input_side(model: torch.nn.Module) -> int | None:
    """A ViT built with another ``img_size`` than its pretrained config accepts only that size; others: None."""
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if pe is None or size is None or getattr(pe, "dynamic_img_size", False) or getattr(pe, "strict_img_size", True) is False:
        return None
    return int(size[0]) if isinstance(size, (tuple, list)) else int(size)
