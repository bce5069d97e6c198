"""Output projectors: signal-token hidden states ``[B, S, d_llm]`` -> a decoder's conditioning ``[B, T, D]``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from xmm.projectors.base import Projector, ProjectorConfig

PROJECTORS: dict[str, type[Projector]] = {}

T = TypeVar("T", bound=type[Projector])


def register_projector(name: str) -> Callable[[T], T]:
    """Class decorator: add a core projector to ``PROJECTORS`` under ``name`` (registered via ``xmm_projectors``)."""

    def deco(cls: T) -> T:
        if name in PROJECTORS:
            raise ValueError(f"projector '{name}' registered twice")
        cls.projector_type = name
        PROJECTORS[name] = cls
        return cls

    return deco


# importing the modules runs their @register_projector decorators
from xmm.projectors import linear, qformer, transformer  # noqa: E402,F401

__all__ = ["PROJECTORS", "Projector", "ProjectorConfig", "register_projector"]
