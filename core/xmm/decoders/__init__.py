"""Decoders: turn the LLM's output back into a modality. Core ships the ``diffusers`` adapter (optional extra).

``DECODERS`` maps a registry name to a factory called with the decoder config as keyword arguments (registered
through the ``xmm_decoders`` hook, like plugin decoders such as ``device-command``).
"""

from __future__ import annotations

from xmm.decoder import Decoder, DecoderOutput

# importing the modules runs their decorators; diffusers itself is imported only when one is built
from xmm.decoders import diffusion  # noqa: F401
from xmm.decoders._registry import DECODERS, register_decoder

__all__ = ["DECODERS", "Decoder", "DecoderOutput", "register_decoder"]
