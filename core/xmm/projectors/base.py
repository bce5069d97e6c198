"""The output ``Projector`` contract and its persistence (the same files as a bridge: config json + safetensors)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from xmm.bridges.base import CONFIG_NAME, load_weights_dir, read_config_json, save_module_dir, validate_config
from xmm.errors import CheckpointError, ConfigError, ShapeError


class ProjectorConfig(BaseModel):
    """Fields every projector config has. Subclasses add their own and fix ``type`` with a ``Literal``."""

    model_config = ConfigDict(extra="forbid")

    type: str
    input_dim: int = Field(gt=0, description="LLM hidden size d_llm")
    output_shape: tuple[int, int] = Field(description="[T, D]: the decoder's conditioning shape, e.g. [77, 1024]")
    num_input_tokens: int | None = Field(default=None, gt=0, description="S, the number of signal tokens")

    @field_validator("output_shape")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] <= 0 or v[1] <= 0:
            raise ValueError("both entries of [T, D] must be positive")
        return v


P = TypeVar("P", bound="Projector")


class Projector(nn.Module):
    """Maps the LLM's last-layer states at the signal tokens ``[B, S, d_llm]`` (+ mask ``[B, S]``) to ``[B, T, D]``."""

    config_class: ClassVar[type[ProjectorConfig]] = ProjectorConfig
    projector_type: ClassVar[str] = ""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    @property
    def output_shape(self) -> tuple[int, int]:
        return tuple(self.config.output_shape)  # type: ignore[return-value]

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def check_input(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Validate ``hidden [B, S, d_llm]`` and ``mask [B, S]``; return a bool mask (all True when None)."""
        d = self.config.input_dim
        if hidden.dim() != 3 or hidden.shape[-1] != d:
            raise ShapeError(f"{type(self).__name__} expects signal-token states of shape [B, S, {d}], got {tuple(hidden.shape)}")
        s = self.config.num_input_tokens
        if s is not None and hidden.shape[1] != s:
            raise ShapeError(f"{type(self).__name__} was built for {s} signal tokens, got {hidden.shape[1]} ({tuple(hidden.shape)})")
        if mask is None:
            return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if mask.shape != hidden.shape[:2]:
            raise ShapeError(f"{type(self).__name__} expects mask of shape {tuple(hidden.shape[:2])}, got {tuple(mask.shape)}")
        return mask.bool()

    # -- persistence ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (this projector's weights only) into ``directory``."""
        return save_module_dir(self, self.config, directory, kind="projector")

    @classmethod
    def from_config(cls: type[P], config: ProjectorConfig | dict[str, Any]) -> P:
        if isinstance(config, dict):
            config = validate_config(cls.config_class, config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> Projector:
        """Load a projector saved by :meth:`save_pretrained` (strict keys and shapes)."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).exists():
            raise CheckpointError(f"{directory}: no projector {CONFIG_NAME} there")
        cfg = read_config_json(directory, kind="projector")
        proj_cls = projector_class(cfg.get("type", "")) if cls is Projector else cls
        if proj_cls.projector_type and cfg.get("type") != proj_cls.projector_type:
            raise CheckpointError(
                f"{directory}: projector type '{cfg.get('type')}' cannot be loaded as {proj_cls.__name__} ('{proj_cls.projector_type}')"
            )
        projector = proj_cls.from_config(cfg)
        load_weights_dir(projector, directory, kind="projector")
        return projector


def projector_class(name: str) -> type[Projector]:
    """The projector class registered under ``name`` (core or plugin)."""
    from xmm.registry import get_registry

    return get_registry().projector_class(name)


def create_projector(config: dict[str, Any] | ProjectorConfig) -> Projector:
    """Build a projector from a config dict with ``type`` (validated; errors name the field) or a config object."""
    if isinstance(config, ProjectorConfig):
        return projector_class(config.type)(config)
    cls = projector_class(str(config.get("type", "")))
    return cls.from_config(config)
