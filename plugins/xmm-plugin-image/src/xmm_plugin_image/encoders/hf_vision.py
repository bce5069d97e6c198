"""Any Hugging Face transformers vision model as an image encoder, with its own image processor.

Works with vision-only checkpoints (ViT, DINOv2, ConvNeXt...) and with the vision tower of dual-encoder checkpoints
(CLIP, SigLIP...): when the config has a ``vision_config``, only the vision model class is built and loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from xmm.encoder import Encoder, EncoderOutput
from xmm.errors import ConfigError, ModelNotFoundError
from xmm.persist import validate_config

from xmm_plugin_image.encoders.common import (
    LayerChoice,
    as_rgb_image,
    file_sha256,
    full_mask,
    resolve_layer,
    spatial_to_tokens,
)

ENCODER_NAME = "hf-vision"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class HFVisionConfig(BaseModel):
    """Config of the ``hf-vision`` encoder. The defaults follow LLaVA: the penultimate layer's patch tokens."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Hub id or local directory (model + image processor)")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit)")
    layer: LayerChoice = Field(default="penultimate", description="last = last_hidden_state; penultimate / i index hidden_states")
    drop_cls: bool = Field(default=True, description="drop tokens before the patch grid (CLS, registers)")
    local_files_only: bool | None = Field(default=None, description="default: true when HF_HUB_OFFLINE is set")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    share: bool = Field(default=False, description="reuse one frozen instance per config in this process")


class HFVisionEncoder(Encoder):
    """A transformers vision model: ``pixel_values [B, 3, H, W] -> [B, T, D]`` from the chosen hidden layer.

    ``layer="penultimate"`` takes ``hidden_states[-2]`` (LLaVA's ``select_layer=-2``); ``layer=i`` takes
    ``hidden_states[i]`` (0 = embeddings). ``drop_cls`` removes the tokens in front of the ``(H/p)*(W/p)`` patch grid.
    Convolutional models' ``[B, C, h, w]`` maps become ``h*w`` tokens. Frozen.
    """

    def __init__(self, config: HFVisionConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else validate_config(HFVisionConfig, kwargs)
        cfg = self.config
        from transformers import AutoConfig, AutoImageProcessor, AutoModel
        from transformers.models.auto.modeling_auto import MODEL_MAPPING

        local_only = cfg.local_files_only
        if local_only is None:
            local_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
        load_kw: dict[str, Any] = {"revision": cfg.revision, "local_files_only": local_only}
        try:
            hf_config = AutoConfig.from_pretrained(cfg.model, **load_kw)
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(f"cannot load a transformers config from '{cfg.model}': {e}") from e
        vision_cfg = getattr(hf_config, "vision_config", None)
        try:
            with _quiet_transformers():
                if vision_cfg is not None:
                    if type(vision_cfg) not in MODEL_MAPPING:
                        raise ConfigError(f"'{cfg.model}': no vision model class for {type(vision_cfg).__name__}", field="model")
                    model = MODEL_MAPPING[type(vision_cfg)].from_pretrained(cfg.model, dtype=_DTYPES[cfg.dtype], **load_kw)
                else:
                    model = AutoModel.from_pretrained(cfg.model, dtype=_DTYPES[cfg.dtype], **load_kw)
                processor = AutoImageProcessor.from_pretrained(cfg.model, **load_kw)
        except OSError as e:
            raise ModelNotFoundError(f"cannot load the vision model or image processor from '{cfg.model}': {e}") from e
        self.model = model
        self.processor = processor
        self.patch_size = getattr(model.config, "patch_size", None)
        self.id = f"hf/{cfg.model}"
        self.revision = _revision(cfg.model, hf_config)
        self.freeze()
        probe = self.preprocess(Image.new("RGB", (64, 64), (128, 128, 128)))
        try:
            with torch.no_grad():
                out = self(**{k: v.unsqueeze(0) for k, v in probe.items()})
        except (IndexError, RuntimeError) as e:
            raise ConfigError(f"cannot take layer {cfg.layer!r} from '{cfg.model}': {e}", field="layer") from e
        self.output_dim = int(out.features.shape[-1])

    # -- contract -------------------------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """Loaded PIL image -> ``{"pixel_values": [3, H, W]}`` via the model's image processor."""
        batch = self.processor(images=as_rgb_image(raw), return_tensors="pt")
        return {"pixel_values": batch["pixel_values"][0].float()}

    def preprocess_config(self) -> dict[str, Any]:
        proc = json.loads(self.processor.to_json_string())
        return {"processor": proc, "layer": self.config.layer, "drop_cls": self.config.drop_cls}

    def forward(self, pixel_values: torch.Tensor, **_: torch.Tensor) -> EncoderOutput:
        """``pixel_values [B, 3, H, W]`` -> features ``[B, T, D]``, mask all True."""
        x = pixel_values.to(_DTYPES[self.config.dtype])
        layer = self.config.layer
        out = self.model(pixel_values=x, output_hidden_states=layer != "last")
        if layer == "last":
            h = out.last_hidden_state
        else:
            states = out.hidden_states
            h = states[resolve_layer(layer, len(states))]
        if h.dim() == 3 and self.config.drop_cls:
            h = h[:, self._num_prefix(h.shape[1], pixel_values.shape[-2:]) :]
        feats = spatial_to_tokens(h)
        return EncoderOutput(feats, full_mask(feats))

    def _num_prefix(self, num_tokens: int, hw: torch.Size) -> int:
        """Tokens in front of the patch grid: CLS, distillation and register tokens (0 for SigLIP)."""
        if not self.patch_size:
            raise ConfigError(f"'{self.config.model}' has no patch_size, so its CLS token cannot be located; set drop_cls=false", field="drop_cls")
        p = self.patch_size if isinstance(self.patch_size, int) else self.patch_size[0]
        grid = (int(hw[0]) // p) * (int(hw[1]) // p)
        return max(0, num_tokens - grid)


def _revision(model: str, hf_config: Any) -> str:
    """The Hub commit for hub ids; for a local directory, a sha256 over its weight files."""
    path = Path(model)
    if path.is_dir():
        h = hashlib.sha256()
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES))
        for p in files:
            h.update(f"{p.name}:{file_sha256(p)}\n".encode())
        return f"sha256:{h.hexdigest()}"
    return str(getattr(hf_config, "_commit_hash", None) or "unknown")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # loading a vision tower out of a CLIP/SigLIP checkpoint logs every unused text-tower weight as a warning
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()
