"""Trained weights of a run: every parameter trained so far, saved beside each checkpoint and restored on resume.

``trained.safetensors`` holds them by model-level parameter name, bit for bit, which is what makes a resumed run
identical to an uninterrupted one (the ``model/`` folder of a checkpoint is the user-facing format).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xmm.errors import CheckpointError
from xmm.training.layout import TRAINED_WEIGHTS

__all__ = ["TRAINED_WEIGHTS", "load_trained_weights", "save_trained_weights"]


def save_trained_weights(model: nn.Module, names: set[str], path: Path) -> None:
    """Every parameter of ``model`` named in ``names``, by model-level name, written atomically to ``path``."""
    from safetensors.torch import save_file

    from xmm.io import atomic_write

    params = dict(model.named_parameters())
    state = {n: params[n].detach().cpu().contiguous().clone() for n in sorted(names) if n in params}
    atomic_write(path, lambda p: save_file(state, str(p)))


def load_trained_weights(model: nn.Module, path: Path) -> set[str]:
    """Copy the weights saved at ``path`` into ``model``; returns their names. Unknown names or other shapes raise
    :class:`~xmm.errors.CheckpointError` (the plan's model was changed since the checkpoint)."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors' own error types
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise CheckpointError(f"{path}: the model has no parameters {missing[:5]}; was the plan's model changed?")
    with torch.no_grad():
        for n, v in state.items():
            if params[n].shape != v.shape:
                raise CheckpointError(f"{path}: '{n}' has shape {tuple(v.shape)}, the model's is {tuple(params[n].shape)}")
            params[n].copy_(v)
    return set(state)

