"""The ``DECODERS`` table and its decorator (a leaf module: decoders register here without importing their package)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from xmm.decoder import Decoder

DECODERS: dict[str, Callable[..., Decoder]] = {}

F = TypeVar("F", bound=Callable[..., Any])


def register_decoder(name: str) -> Callable[[F], F]:
    """Decorator: add a core decoder class or factory to ``DECODERS`` under ``name``."""

    def deco(factory: F) -> F:
        if name in DECODERS:
            raise ValueError(f"decoder '{name}' registered twice")
        DECODERS[name] = factory
        return factory

    return deco
