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
    """Turns LLM output into a modality, and says what it produces.

    Input: ``input_kind = "conditioning"``: :meth:`forward` takes ``conditioning [B, T, D]`` (the output projector's
    result over signal-token hidden states; ``condition_shape = (T, D)``). ``input_kind = "text"``: it takes the
    LLM's answer text (e.g. a device command to parse and validate).

    Output: ``output_kind = "media"``: each output is written to a file by :meth:`save_output` (an image, a
    waveform); ``"result"``: each output is a value reported as it is (a command and what running it did), never a
    file. :meth:`produced` says whether an output holds something (a text decoder reads every answer, and an answer
    that is not for it yields an empty result); :meth:`describe_output` gives a JSON-able description of one output.
    ``signal_prefix``: the short name of the signal tokens (``img`` -> ``<img_0>``), default the output's name.
    Decoders are frozen by default.
    """

    id: str = "decoder"
    revision: str = "0"
    modality: str = ""
    input_kind: ClassVar[Literal["conditioning", "text"]] = "conditioning"
    output_kind: ClassVar[Literal["media", "result"]] = "media"
    signal_prefix: str | None = None
    condition_shape: tuple[int, int] | None = None

    def forward(self, conditioning: torch.Tensor | None = None, *, text: list[str] | None = None, **kwargs: Any) -> DecoderOutput:  # pragma: no cover
        raise NotImplementedError

    def text_condition(self, captions: list[str]) -> torch.Tensor:
        """A conditioning decoder's own text-encoder embedding of ``captions``: ``[B, T, D]`` with ``(T, D) =
        condition_shape``. It is the target of the decoder-side alignment loss (NExT-GPT)."""
        raise NotImplementedError(f"{type(self).__name__} has no text encoder to align signal tokens with")

    def save_output(self, output: Any, path_stem: str | Path) -> Path:
        """Write one produced output to ``path_stem`` + a suitable suffix and return the path (``media`` decoders)."""
        raise NotImplementedError(f"{type(self).__name__} cannot save its outputs to files")

    def produced(self, output: Any) -> bool:
        """Whether ``output`` (one item of :attr:`DecoderOutput.outputs`) holds something to report."""
        return output is not None

    def describe_output(self, output: Any) -> dict[str, Any]:
        """A JSON-able description of one produced output (for logs, chat front ends and servers)."""
        return {"modality": self.modality, "kind": self.output_kind, "type": type(output).__name__}

    def describe(self) -> dict[str, Any]:
        """A JSON-able record of this decoder for checkpoint manifests."""
        return {"id": self.id, "revision": self.revision}

    def rebuild_config(self) -> dict[str, Any] | None:
        """Keyword arguments that rebuild this decoder from the registry, or None when it cannot be (an object that
        was handed in ready, e.g. a pipeline in memory)."""
        return None
