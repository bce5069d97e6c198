"""The ``Decoder`` contract: turn what the LLM produced back into a modality (image, audio, device command...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn


@dataclass
class DecoderOutput:
    """What a decoder produced for a batch: one output per item (a PIL image, a waveform, a command...)."""

    modality: str
    outputs: list[Any]
    info: dict[str, Any] = field(default_factory=dict)


class Decoder(nn.Module):
    """Turns LLM output into a modality.

    ``input_kind = "conditioning"``: :meth:`forward` takes ``conditioning [B, T, D]`` (the output projector's
    result over signal-token hidden states; ``condition_shape = (T, D)``). ``input_kind = "text"``: it takes the
    LLM's answer text (e.g. a device command to parse and validate). Decoders are frozen by default.
    """

    id: str = "decoder"
    revision: str = "0"
    modality: str = ""
    input_kind: ClassVar[Literal["conditioning", "text"]] = "conditioning"
    condition_shape: tuple[int, int] | None = None

    def forward(self, conditioning: torch.Tensor | None = None, *, text: list[str] | None = None, **kwargs: Any) -> DecoderOutput:  # pragma: no cover
        raise NotImplementedError

    def text_condition(self, captions: list[str]) -> torch.Tensor:
        """A conditioning decoder's own text-encoder embedding of ``captions``: ``[B, T, D]`` with ``(T, D) =
        condition_shape``. It is the target of the decoder-side alignment loss (NExT-GPT)."""
        raise NotImplementedError(f"{type(self).__name__} has no text encoder to align signal tokens with")

    def save_output(self, output: Any, path_stem: str | Path) -> Path:
        """Write one produced output to ``path_stem`` + a suitable suffix and return the path."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its outputs to files")
