"""The ``BRIDGES`` table and its decorator (a leaf module: bridges register here without importing their package)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from xmm.bridges.base import Bridge

BRIDGES: dict[str, type[Bridge]] = {}

T = TypeVar("T", bound=type[Bridge])


def register_bridge(name: str) -> Callable[[T], T]:
    """Class decorator: add a core bridge to ``BRIDGES`` under ``name`` (registered via the ``xmm_bridges`` hook)."""

    def deco(cls: T) -> T:
        if name in BRIDGES:
            raise ValueError(f"bridge '{name}' registered twice")
        cls.bridge_type = name
        BRIDGES[name] = cls
        return cls

    return deco
