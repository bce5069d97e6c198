"""Output projectors: signal-token hidden states ``[B, S, d_llm]`` -> a decoder's conditioning ``[B, T, D]``."""

from __future__ import annotations

# importing the modules runs their decorators
from xmm.projectors import linear, qformer, transformer  # noqa: F401
from xmm.projectors._registry import PROJECTORS, register_projector
from xmm.projectors.base import Projector, ProjectorConfig

__all__ = ["PROJECTORS", "Projector", "ProjectorConfig", "register_projector"]
