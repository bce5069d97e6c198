"""Which torch device tests run on."""

from __future__ import annotations

import os
from typing import Any

ENV = "XMM_TEST_DEVICE"


def pick_device(name: str | None = None) -> Any:
    """``torch.device`` for tests: ``name`` (or ``$XMM_TEST_DEVICE``) when set and not ``auto``, else the first of
    cuda, mps, cpu that this machine has."""
    import torch

    name = name or os.environ.get(ENV) or "auto"
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
