"""User-written configuration of a :class:`~xmm.model.MultimodalLM` (pydantic v2, YAML-loadable)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from xmm.errors import ConfigError
from xmm.model.outputs import OutputConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModalityConfig(_Strict):
    """One modality of the model: which encoder feeds which bridge.

    ``bridge`` is a bridge config without ``input_dim``/``output_dim`` (filled from the encoder's ``output_dim`` and
    the LLM hidden size); ``None`` means the modality's default bridge. ``shared_bridge`` names an entry of
    :attr:`MultimodalConfig.shared_bridges` instead: several modalities then use ONE bridge module (ChatBridge).
    """

    encoder: str | None = Field(None, description="registry name of the encoder; default: the modality's default")
    encoder_config: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the encoder")
    bridge: dict[str, Any] | None = Field(None, description="bridge config (type + options) without dims")
    shared_bridge: str | None = Field(None, description="name of a shared bridge in `shared_bridges`")

    @model_validator(mode="after")
    def _one_bridge(self) -> ModalityConfig:
        if self.bridge is not None and self.shared_bridge is not None:
            raise ValueError("set either 'bridge' or 'shared_bridge', not both")
        return self


class LoraSettings(_Strict):
    """LoRA on the frozen LLM (peft). Only the adapter is trained and saved."""

    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"])


class MultimodalConfig(_Strict):
    """Everything needed to build a :class:`~xmm.model.MultimodalLM`.

    ``llm``: ``"smollm2"`` (the offline default), a local folder or any ``AutoModelForCausalLM`` id.
    ``autocast``: ``auto`` = bf16 autocast where the device supports it (CPUs with AVX512-BF16/AMX, CUDA), ``bf16``
    forces it, ``off`` runs in the weights' dtype. ``max_length``: context limit for prompt + media tokens
    (default: the LLM's ``max_position_embeddings``).
    """

    llm: str | None = "smollm2"
    modalities: dict[str, ModalityConfig] = Field(default_factory=dict)
    shared_bridges: dict[str, dict[str, Any]] = Field(default_factory=dict)
    lora: LoraSettings | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    autocast: Literal["auto", "bf16", "off"] = "auto"
    device: str | None = Field(None, description="torch device; default cuda, else mps, else cpu (the first there)")
    max_length: int | None = Field(None, gt=0)
    system_prompt: str | None = Field(
        None,
        description="system message put first when a conversation has none (None: the chat template's own default, "
        "e.g. SmolLM2's 'You are a helpful AI assistant...'; '' gives an empty system turn, a few tokens shorter)",
    )
    signal_tokens: list[str] = Field(default_factory=list, description="trainable new tokens (e.g. decoder signals)")
    outputs: dict[str, OutputConfig] = Field(
        default_factory=dict, description="output modalities (decoder + projector + signal tokens), see xmm.model.outputs"
    )

    @model_validator(mode="after")
    def _check_shared(self) -> MultimodalConfig:
        for name, mc in self.modalities.items():
            if mc.shared_bridge is not None and mc.shared_bridge not in self.shared_bridges:
                raise ValueError(
                    f"modality '{name}' uses shared_bridge '{mc.shared_bridge}', which is not defined in "
                    f"shared_bridges (defined: {sorted(self.shared_bridges) or 'none'})"
                )
        for name, cfg in self.shared_bridges.items():
            if "type" not in cfg:
                raise ValueError(f"shared bridge '{name}' needs a 'type'")
        return self

    @classmethod
    def load(cls, source: MultimodalConfig | dict[str, Any] | str | os.PathLike[str]) -> MultimodalConfig:
        """Validate a config object, a dict or a YAML file; errors are :class:`ConfigError` naming the field."""
        from xmm.persist import validate_config

        if isinstance(source, MultimodalConfig):
            return source
        if isinstance(source, dict):
            return validate_config(cls, source)
        path = Path(source)
        try:
            import yaml

            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise ConfigError(f"cannot read config file: {e.strerror or e}", source=path) from e
        except Exception as e:  # yaml.YAMLError and friends
            raise ConfigError(f"not valid YAML: {e}", source=path) from e
        if not isinstance(data, dict):
            raise ConfigError("the file must hold a mapping of config fields", source=path)
        # a training plan may nest the model config under `model:`
        if "model" in data and isinstance(data["model"], dict) and "modalities" not in data:
            data = data["model"]
        return validate_config(cls, data, source=str(path))
