"""NExT-GPT's decoder-side alignment: teach the LLM to emit signal tokens for a caption and make the projected
signal-token states match what the decoder's own text encoder makes of that caption.

``loss = mse_weight * MSE(projector(signal states), decoder.text_condition(caption))
       + nll_weight * NLL(signal tokens)``

The pieces of that loss live here; the training objective ``decoder_alignment`` that puts them together over a
model's output is :mod:`xmm.training.objectives_decoder`. Data: the user turn holds the caption (or
``"meta": {"caption": ...}`` / ``{"captions": [...]}`` one per signal group), the assistant answer holds the signal
tokens, e.g. ``{"messages": [{"role": "user", "content": "a red circle"},
{"role": "assistant", "content": "<img_0><img_1><img_2><img_3>"}]}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

from xmm.errors import ShapeError, TrainingError

_CACHE_ATTR = "_xmm_caption_cache"
_CACHE_LIMIT = 20000


def alignment_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between projected conditioning ``[G, T, D]`` and the text-encoder target ``[G, T, D]``,
    over every position (a diffusion decoder cross-attends to all T positions, padding included)."""
    if pred.shape != target.shape:
        raise ShapeError(f"projected conditioning {tuple(pred.shape)} and decoder text embedding {tuple(target.shape)} differ")
    return F.mse_loss(pred.float(), target.to(pred.device).float())


def signal_nll(logits: torch.Tensor, labels: torch.Tensor, signal_ids: Sequence[int],
               logits_positions: torch.Tensor | None = None) -> torch.Tensor | None:
    """Next-token cross-entropy on the signal tokens only (the LM loss restricted to labels that are signal ids).

    ``logits [B, L, V]`` over every position with ``labels [B, L]``, or ``[B, K, V]`` at ``logits_positions [K]``
    (the model's ``logits="labels"`` mode: position p predicts ``labels[:, p + 1]``). ``None`` without signal labels.
    """
    if logits_positions is None:
        pred, target = logits[:, :-1], labels[:, 1:]
    else:
        pred, target = logits, labels[:, logits_positions + 1]
    ids = torch.tensor(list(signal_ids), dtype=target.dtype, device=target.device)
    keep = torch.isin(target, ids)
    if not bool(keep.any()):
        return None
    return F.cross_entropy(pred[keep].float(), target[keep])


def captions_of(example: Any) -> list[str]:
    """The caption(s) of one training example: ``meta.captions`` / ``meta.caption``, else the text of the last user
    message before the first assistant answer."""
    if isinstance(example, Mapping):
        meta = example.get("meta")
        if isinstance(meta, Mapping):
            if isinstance(meta.get("captions"), Sequence) and not isinstance(meta.get("captions"), str):
                return [str(c) for c in meta["captions"]]
            if isinstance(meta.get("caption"), str):
                return [meta["caption"]]
        messages = example.get("messages", [])
    else:
        messages = example or []
    text = None
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        if message.get("role") == "assistant":
            break
        if message.get("role") == "user":
            text = _text_of(message.get("content"))
    return [text] if text else []


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content.strip()
    parts = [p.get("text", "") for p in content or [] if isinstance(p, Mapping) and p.get("type") == "text"]
    return " ".join(t.strip() for t in parts if t and t.strip())


def text_targets(decoder: Any, captions: list[str]) -> torch.Tensor:
    """``decoder.text_condition(captions)`` ``[G, T, D]``, memoised per caption on the decoder (its text encoder is
    frozen, so the embedding of a caption never changes; this spares a text-encoder pass per step)."""
    cache: dict[str, torch.Tensor] = decoder.__dict__.setdefault(_CACHE_ATTR, {})
    missing = sorted({c for c in captions if c not in cache})
    if missing:
        if len(cache) + len(missing) > _CACHE_LIMIT:
            cache.clear()
        try:
            fresh = decoder.text_condition(missing)
        except NotImplementedError as e:
            raise TrainingError(f"decoder_alignment: {e}; its output cannot be aligned (set mse_weight: 0)") from e
        for c, row in zip(missing, fresh):
            cache[c] = row.detach()
    return torch.stack([cache[c] for c in captions])
