"""The ``PROJECTORS`` table and its decorator (a leaf module: projectors register here without importing their package)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from xmm.projectors.base import Projector

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
