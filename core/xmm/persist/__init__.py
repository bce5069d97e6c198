"""Leaf persistence helpers: folder layouts, config validation, safetensors save/load with strict checks, tensor
digests. Importing it does not import torch (``xmm.persist.module``, the save/load base class, does)."""

from __future__ import annotations

from xmm.persist.digest import tensor_digest
from xmm.persist.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_state_strict,
    load_weights_dir,
    read_config_json,
    save_module_dir,
    validate_config,
)

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "load_state_strict",
    "load_weights_dir",
    "read_config_json",
    "save_module_dir",
    "tensor_digest",
    "validate_config",
]
