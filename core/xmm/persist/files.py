"""Save and load a config + safetensors folder (``config.json`` + ``model.safetensors``), validate configs, load
state dicts strictly. Shared by bridges, projectors, decoders, trainable encoders and the model config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from xmm.errors import CheckpointError, ConfigError
from xmm.io import atomic_write

if TYPE_CHECKING:  # torch is imported by the functions that use it: config validation must not pay for it
    import torch
    from torch import nn

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


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
