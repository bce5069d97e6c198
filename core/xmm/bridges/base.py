"""The ``Bridge`` contract: encoder features in, LLM embeddings out; saved as a config + safetensors folder."""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from xmm.errors import CheckpointError, ShapeError
from xmm.persist.module import ConfigModule
from xmm.pretrained import is_repo_id

# persistence helpers that lived here before xmm.persist; still importable from here for one release
_MOVED_TO_PERSIST = frozenset(
    {"CONFIG_NAME", "WEIGHTS_NAME", "load_state_strict", "load_weights_dir", "read_config_json", "save_module_dir",
     "validate_config"}
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_PERSIST:
        warnings.warn(f"xmm.bridges.base.{name} moved to xmm.persist; import it from there (this alias goes in the "
                      "next release)", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("xmm.persist"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BridgeConfig(BaseModel):
    """Fields every bridge config has. Subclasses add their own and fix ``type`` with a ``Literal``."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    type: str
    input_dim: int = Field(gt=0, description="encoder feature width D_enc")
    output_dim: int = Field(gt=0, description="LLM embedding width d_llm")


@dataclass
class BridgeOutput:
    """embeds ``[B, Q, d_llm]``; mask ``[B, Q]`` bool (True = real token); aux: extra tensors for losses."""

    embeds: torch.Tensor
    mask: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


class Bridge(ConfigModule):
    """A trainable interface from encoder features ``[B, T, D_enc]`` (+ mask ``[B, T]``) to LLM embeddings.

    Subclasses set ``config_class`` and implement :meth:`forward`. ``modality`` lets one shared bridge (ChatBridge)
    keep a query set per modality; single-modality bridges ignore it. A bridge with ``uses_context = True`` also gets
    ``context [B, L, d_llm]`` / ``context_mask [B, L]``: the frozen LLM's embeddings of the text of the chat turn
    that holds the item (its instruction or question, as InstructBLIP's Q-Former does), or None when there is none.
    Saving and loading (:meth:`save_pretrained`, :meth:`from_pretrained` of a concrete class) come from
    :class:`~xmm.persist.module.ConfigModule`; ``xmm.registry.load_bridge`` loads a folder or Hub repo of any type.
    """

    config_class: ClassVar[type[BridgeConfig]] = BridgeConfig
    bridge_type: ClassVar[str] = ""
    uses_context: ClassVar[bool] = False
    kind: ClassVar[str] = "bridge"
    config: BridgeConfig

    @classmethod
    def saved_type(cls) -> str:
        return cls.bridge_type or super().saved_type()

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> BridgeConfig:
        """A small valid config, used by the tests that run over every registered bridge (plugins' too).

        The default takes the config class's defaults; bridges whose defaults are large override it.
        """
        return cls.config_class(type=cls.bridge_type, input_dim=input_dim, output_dim=output_dim)

    def num_output_tokens(self, num_input_tokens: int | None = None, *, modality: str | None = None) -> int | None:
        """Q, the embeddings this bridge gives one item whose encoder output has ``num_input_tokens`` tokens (None:
        not known). The model asks this for every item and writes it into checkpoint manifests: a bridge, not the
        modality, decides Q. Return None when Q is not fixed by the input's token count alone (CIF fires as many
        tokens as it integrates) or when it follows an unknown count; the forward pass then tells."""
        return None

    # -- input checks ------------------------------------------------------------------------------
    def check_input(self, features: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Validate ``features [B, T, D_enc]`` and ``mask [B, T]``; return a bool mask (all True when None)."""
        d = self.config.input_dim
        if features.dim() != 3 or features.shape[-1] != d:
            raise ShapeError(
                f"{type(self).__name__} expects features of shape [B, T, {d}], got {tuple(features.shape)}"
            )
        if mask is None:
            return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if mask.shape != features.shape[:2]:
            raise ShapeError(
                f"{type(self).__name__} expects mask of shape [B, T] = {tuple(features.shape[:2])}, got {tuple(mask.shape)}"
            )
        return mask.bool()

    # -- deprecated entry points (the registry and the hub own these now) ----------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **hub_kwargs: Any) -> Bridge:  # type: ignore[override]
        """Load a folder saved by :meth:`save_pretrained` into this (concrete) bridge class, strictly.

        On the base class, or with a Hub repo id, this is deprecated: use ``xmm.registry.load_bridge``.
        """
        local = Path(directory).is_dir()
        if cls is not Bridge and local and not hub_kwargs:
            return super().from_pretrained(directory)
        if not local and not is_repo_id(os.fspath(directory)):
            return super().from_pretrained(directory)  # raises: no config there
        warnings.warn("Bridge.from_pretrained with a Hub repo id or on the base class is deprecated; use "
                      "xmm.registry.load_bridge(path_or_repo_id)", DeprecationWarning, stacklevel=2)
        # by module name: a contract does not import the layers above it
        registry = importlib.import_module("xmm.registry")
        bridge = registry.load_bridge(directory, **hub_kwargs)
        if not isinstance(bridge, cls):
            raise CheckpointError(f"{directory}: holds a '{bridge.config.type}' bridge, not a {cls.__name__}")
        return bridge

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Deprecated: use ``xmm.hub.push_bridge(bridge, repo_id)``."""
        warnings.warn("Bridge.push_to_hub is deprecated; use xmm.hub.push_bridge(bridge, repo_id)", DeprecationWarning,
                      stacklevel=2)
        return importlib.import_module("xmm.hub").push_bridge(self, repo_id, **kwargs)
