"""Decoders: turn the LLM's output back into a modality. Core ships the ``diffusers`` adapter (optional extra).

``DECODERS`` maps a registry name to a factory called with the decoder config as keyword arguments (registered
through the ``xmm_decoders`` hook, like plugin decoders such as ``device-command``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from xmm.decoder import Decoder, DecoderOutput

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


# importing the module runs its @register_decoder decorator; diffusers itself is imported only when one is built
from xmm.decoders import diffusion  # noqa: E402,F401

__all__ = ["DECODERS", "Decoder", "DecoderOutput", "register_decoder"]
