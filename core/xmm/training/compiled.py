"""A stage's ``compile`` option: the LLM's decoder stack under ``torch.compile`` for the stage.

The decoder (the layers between the input embeddings and the LM head) is nearly all of an LLM stage's work and its
inputs are plain tensors ``[B, L, D]``, so it compiles whole; media encoding, bridging and splicing stay eager (their
inputs are lists of items). Shapes come from a small set: the spliced length is rounded up to a multiple of
:data:`PAD_MULTIPLE` (padding that the attention mask hides) and a stage's micro-batch is fixed (``drop_last``), so
each length compiles once. On CUDA the ``reduce-overhead`` mode also replays the step as CUDA graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# spliced lengths are rounded up to a multiple of this while a stage runs compiled
PAD_MULTIPLE = 16


def compile_mode(setting: bool | str, device: torch.device) -> str:
    """The ``torch.compile`` mode of a stage's ``compile``: ``true`` = CUDA graphs on CUDA (``reduce-overhead``),
    the default mode elsewhere; a mode name as given."""
    if setting is True:
        return "reduce-overhead" if device.type == "cuda" else "default"
    return str(setting)


def compile_llm(model: Any, setting: bool | str) -> Callable[[], None]:
    """Run ``model``'s LLM decoder compiled (and pad spliced inputs to :data:`PAD_MULTIPLE`) until the returned
    function undoes it."""
    decoder = model.llm.get_decoder()
    mode = compile_mode(setting, model.device)
    compiled = torch.compile(decoder.forward, mode=mode, dynamic=False)
    decoder.forward = compiled
    previous_pad = getattr(model, "pad_to_multiple_of", None)
    model.pad_to_multiple_of = PAD_MULTIPLE
    log.info("LLM decoder compiled (mode %s)", mode)

    def undo() -> None:
        if decoder.__dict__.get("forward") is compiled:
            del decoder.forward
        model.pad_to_multiple_of = previous_pad

    return undo
