"""The output ``Projector`` contract: signal-token hidden states in, decoder conditioning out; saved like a bridge
(config json + safetensors)."""

from __future__ import annotations

import importlib
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from xmm.errors import ShapeError
from xmm.persist import CONFIG_NAME
from xmm.persist.module import ConfigModule


def __getattr__(name: str) -> Any:
    # projector_class / create_projector look classes up in the registry, which sits above this layer; they moved
    # there and stay importable from here for one release (resolved by module name, not imported)
    if name in ("projector_class", "create_projector"):
        warnings.warn(f"xmm.projectors.base.{name} moved to xmm.registry; import it from there (this alias goes in "
                      "the next release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("xmm.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class Projector(ConfigModule):
    """Maps the LLM's last-layer states at the signal tokens ``[B, S, d_llm]`` (+ mask ``[B, S]``) to ``[B, T, D]``.

    Saving and loading a concrete class come from :class:`~xmm.persist.module.ConfigModule`;
    ``xmm.registry.load_projector`` loads a folder of any registered type.
    """

    config_class: ClassVar[type[ProjectorConfig]] = ProjectorConfig
    projector_type: ClassVar[str] = ""
    kind: ClassVar[str] = "projector"
    config: ProjectorConfig

    @classmethod
    def saved_type(cls) -> str:
        return cls.projector_type or super().saved_type()

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

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str]) -> Projector:  # type: ignore[override]
        """Load a folder saved by :meth:`save_pretrained` into this (concrete) projector class, strictly.

        On the base class this is deprecated: use ``xmm.registry.load_projector``.
        """
        if cls is Projector and (Path(directory) / CONFIG_NAME).is_file():
            warnings.warn("Projector.from_pretrained on the base class is deprecated; use "
                          "xmm.registry.load_projector(directory)", DeprecationWarning, stacklevel=2)
            return importlib.import_module("xmm.registry").load_projector(directory)
        return super().from_pretrained(directory)
