"""The ``Bridge`` contract and its persistence (safetensors + config json), shared by every bridge type."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from xmm.errors import CheckpointError, ConfigError, ShapeError
from xmm.io import atomic_write

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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


B = TypeVar("B", bound="Bridge")


class Bridge(nn.Module):
    """A trainable interface from encoder features ``[B, T, D_enc]`` (+ mask ``[B, T]``) to LLM embeddings.

    Subclasses set ``config_class`` and implement :meth:`forward`. ``modality`` lets one shared bridge (ChatBridge)
    keep a query set per modality; single-modality bridges ignore it. A bridge with ``uses_context = True`` also gets
    ``context [B, L, d_llm]`` / ``context_mask [B, L]``: the frozen LLM's embeddings of the text of the chat turn
    that holds the item (its instruction or question, as InstructBLIP's Q-Former does), or None when there is none.
    """

    config_class: ClassVar[type[BridgeConfig]] = BridgeConfig
    bridge_type: ClassVar[str] = ""
    uses_context: ClassVar[bool] = False

    def __init__(self, config: BridgeConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None, *, modality: str | None = None) -> BridgeOutput:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def tiny_config(cls, input_dim: int, output_dim: int) -> BridgeConfig:
        """A small valid config, used by the tests that run over every registered bridge (plugins' too).

        The default takes the config class's defaults; bridges whose defaults are large override it.
        """
        return cls.config_class(type=cls.bridge_type, input_dim=input_dim, output_dim=output_dim)

    def num_output_tokens(self, modality: str | None = None) -> int | None:
        """Q, the number of embeddings per item; ``None`` when it depends on the input (e.g. CIF)."""
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

    # -- persistence ----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (this bridge's weights only) into ``directory``."""
        return save_module_dir(self, self.config, directory, kind="bridge")

    @classmethod
    def from_config(cls: type[B], config: BridgeConfig | dict[str, Any]) -> B:
        if isinstance(config, dict):
            config = validate_config(cls.config_class, config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], **hub_kwargs: Any) -> Bridge:
        """Load a bridge saved by :meth:`save_pretrained` (strict). A Hub repo id is resolved via ``xmm.hub``."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).exists():
            from xmm import hub  # a repo id, not a local folder

            directory = hub.resolve_bridge_dir(str(directory), **hub_kwargs)
        cfg = read_config_json(directory, kind="bridge")
        if cls is Bridge:
            from xmm.registry import get_registry

            bridge_cls = get_registry().bridge_class(cfg.get("type", ""))
        else:
            bridge_cls = cls
        if bridge_cls.bridge_type and cfg.get("type") != bridge_cls.bridge_type:
            raise CheckpointError(
                f"{directory}: bridge type '{cfg.get('type')}' cannot be loaded as {bridge_cls.__name__} ('{bridge_cls.bridge_type}')"
            )
        bridge = bridge_cls.from_config(cfg)
        load_weights_dir(bridge, directory, kind="bridge")
        return bridge

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload this bridge alone (config + safetensors + card) to the Hub; returns the commit url."""
        from xmm import hub

        return hub.push_bridge(self, repo_id, **kwargs)


def save_module_dir(module: nn.Module, config: BaseModel, directory: str | os.PathLike[str], *, kind: str) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (``module``'s state dict) into ``directory``, atomically.

    Shared by bridges and output projectors; ``kind`` is recorded in the safetensors metadata (``xmm_<kind>``).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    meta = {"format": "pt", f"xmm_{kind}": str(getattr(config, "type", ""))}
    atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata=meta))
    cfg = config.model_dump(mode="json")
    atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n"))
    return directory


def read_config_json(directory: Path, *, kind: str) -> dict[str, Any]:
    """The ``config.json`` written by :func:`save_module_dir`; unreadable -> :class:`CheckpointError`."""
    try:
        return json.loads((directory / CONFIG_NAME).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory / CONFIG_NAME}: cannot read {kind} config: {e}") from e


def load_weights_dir(module: nn.Module, directory: Path, *, kind: str) -> None:
    """Load ``directory/model.safetensors`` into ``module`` strictly (see :func:`load_state_strict`)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(directory / WEIGHTS_NAME))
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{directory / WEIGHTS_NAME}: cannot read {kind} weights: {e}") from e
    load_state_strict(module, state, source=directory / WEIGHTS_NAME)


def validate_config(config_class: type[BaseModel], data: dict[str, Any], *, source: str | None = None) -> Any:
    """Validate ``data`` into ``config_class``; a failure raises :class:`ConfigError` naming the first bad field."""
    try:
        return config_class.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{err['msg']} (got {err.get('input')!r})", field=loc or None, source=source) from e


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], *, source: Any) -> None:
    """Load ``state`` into ``module`` requiring identical keys and shapes; errors name the first mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match {type(module).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{source}: '{k}' has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    module.load_state_dict(state, strict=True)
