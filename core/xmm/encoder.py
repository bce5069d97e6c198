"""The ``Encoder`` contract: a (usually frozen) single-modality feature extractor."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from xmm.errors import ShapeError
from xmm.persist import tensor_digest


@dataclass
class EncoderOutput:
    """Encoder features for a batch.

    features: ``[B, T, D]`` float; mask: ``[B, T]`` bool, True where a token is real (False = padding).
    """

    features: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ShapeError(f"EncoderOutput.features must be [B, T, D], got shape {tuple(self.features.shape)}")
        if self.mask.shape != self.features.shape[:2]:
            raise ShapeError(
                f"EncoderOutput.mask must be [B, T] = {tuple(self.features.shape[:2])}, got {tuple(self.mask.shape)}"
            )
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()

    def split(self) -> list[EncoderOutput]:
        """One ``EncoderOutput`` per item with padding removed: features ``[1, T_i, D]``."""
        out = []
        # one read of the device for every item's length; padding is always at the end of the token axis, so the
        # first n tokens are the real ones
        for i, n in enumerate(self.mask.sum(1).tolist()):
            out.append(EncoderOutput(self.features[i : i + 1, :n], self.mask[i : i + 1, :n]))
        return out

    @staticmethod
    def pad(items: Sequence[EncoderOutput]) -> EncoderOutput:
        """Right-pad and concatenate per-item outputs into one batch ``[B, T_max, D]``."""
        if not items:
            raise ShapeError("cannot batch an empty list of EncoderOutput")
        t_max = max(o.features.shape[1] for o in items)
        feats, masks = [], []
        for o in items:
            pad = t_max - o.features.shape[1]
            feats.append(torch.nn.functional.pad(o.features, (0, 0, 0, pad)))
            masks.append(torch.nn.functional.pad(o.mask, (0, pad), value=False))
        return EncoderOutput(torch.cat(feats, 0), torch.cat(masks, 0))


class Encoder(nn.Module):
    """A single-modality encoder.

    Subclasses set ``id`` (stable name recorded in checkpoints), ``revision`` (weights version or file hash) and
    ``output_dim`` (D), implement :meth:`preprocess` (one loaded item -> tensors without a batch axis) and
    :meth:`forward` (batched tensors -> :class:`EncoderOutput`). Encoders are frozen by default: no gradients, and
    ``train()`` cannot switch a frozen encoder out of eval mode. An encoder with no pretrained weights (e.g. device
    telemetry) sets ``trainable = True`` and is unfrozen until a training stage freezes it.
    """

    id: str = "encoder"
    revision: str = "0"
    output_dim: int = 0
    trainable: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self._frozen = not self.trainable

    # -- contract ---------------------------------------------------------------------------------
    def preprocess(self, raw: Any) -> dict[str, torch.Tensor]:
        """Turn one loaded media item (what ``ModalitySpec.load`` returns) into tensors without a batch axis."""
        raise NotImplementedError

    def collate(self, items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Batch preprocessed items. Same-shape tensors are stacked; tensors whose first axis differs are
        right-padded with zeros along it and a ``lengths`` LongTensor ``[B]`` (first-axis sizes) is added."""
        if not items:
            raise ShapeError("cannot collate an empty batch")
        out: dict[str, torch.Tensor] = {}
        for key in items[0]:
            tensors = [it[key] for it in items]
            shapes = {tuple(t.shape) for t in tensors}
            if len(shapes) == 1:
                out[key] = torch.stack(tensors)
                continue
            if len({t.shape[1:] for t in tensors}) != 1:
                raise ShapeError(f"{type(self).__name__}.collate: '{key}' items differ beyond the first axis: {shapes}")
            n = max(t.shape[0] for t in tensors)
            out[key] = torch.stack([torch.nn.functional.pad(t, (0, 0) * (t.dim() - 1) + (0, n - t.shape[0])) for t in tensors])
            out.setdefault("lengths", torch.tensor([t.shape[0] for t in tensors], dtype=torch.long))
        return out

    def forward(self, **inputs: torch.Tensor) -> EncoderOutput:  # pragma: no cover - abstract
        """Batched tensors from :meth:`collate` -> features ``[B, T, D]`` and mask ``[B, T]``."""
        raise NotImplementedError

    def preprocess_config(self) -> dict[str, Any]:
        """JSON-able settings that change :meth:`preprocess`'s output; part of the feature-cache key."""
        return {}

    def num_output_tokens(self) -> int | None:
        """T, the tokens :meth:`forward` gives per item when that is fixed (a 7 x 7 feature grid: 49); None when it
        depends on the input (audio length, number of frames). The bridge maps it to the LLM positions an item takes."""
        return None

    # -- helpers ----------------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> Encoder:
        self._frozen = True
        self.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> Encoder:
        self._frozen = False
        self.requires_grad_(True)
        return self

    def train(self, mode: bool = True) -> Encoder:
        # a frozen encoder stays in eval mode (dropout off, BN statistics fixed) whatever its parent does
        return super().train(mode and not self._frozen)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this encoder's outputs: id, revision and preprocessing, plus a hash of the current
        weights for a ``trainable`` encoder (its revision names the architecture, not weights that training changes)."""
        fp: dict[str, Any] = {"id": self.id, "revision": self.revision, "preprocess": self.preprocess_config()}
        if self.trainable:
            fp["weights"] = tensor_digest(self)
        return fp

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def encode(self, items: Sequence[Any]) -> EncoderOutput:
        """Convenience: preprocess, collate and run a list of loaded items (no grad when frozen)."""
        batch = self.collate([self.preprocess(x) for x in items])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            return self(**batch)


def weights_digest(module: nn.Module) -> str:
    """Deprecated alias of :func:`xmm.persist.tensor_digest` (same digest)."""
    warnings.warn("xmm.encoder.weights_digest is deprecated; use xmm.persist.tensor_digest", DeprecationWarning,
                  stacklevel=2)
    return tensor_digest(module)
