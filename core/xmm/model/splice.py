"""Splicing media embeddings into the LLM input where the placeholders are.

Each placeholder position (one token) is replaced by that item's ``Q_i`` bridge embeddings; ``attention_mask``,
``labels`` and ``position_ids`` are rebuilt to the new length with the batch's padding side kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from xmm.errors import PromptError, ShapeError

IGNORE_INDEX = -100


@dataclass
class SplicedInputs:
    """LLM inputs after splicing, all ``[B, L']`` (embeds ``[B, L', D]``).

    ``token_ids`` keeps the text ids with every media position set to its placeholder id (so signal tokens and
    placeholders can be found); ``media_mask`` is True on media positions; ``media_spans[i] = (b, start, Q_i)``
    for the i-th item in order.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    token_ids: torch.Tensor
    media_mask: torch.Tensor
    labels: torch.Tensor | None = None
    media_spans: list[tuple[int, int, int]] = field(default_factory=list)


def placeholder_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, placeholder_ids: Sequence[int]) -> torch.Tensor:
    """``[N, 2]`` (batch, position) of every placeholder on a real token, in row-major order."""
    ids = torch.tensor(list(placeholder_ids), dtype=input_ids.dtype, device=input_ids.device)
    hit = torch.isin(input_ids, ids) & attention_mask.bool()
    return hit.nonzero()


def splice(
    token_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    media_embeds: Sequence[torch.Tensor],
    placeholder_ids: Sequence[int],
    *,
    labels: torch.Tensor | None = None,
    padding_side: str = "right",
) -> SplicedInputs:
    """Replace each placeholder in ``input_ids [B, L]`` by the next item of ``media_embeds`` (each ``[Q_i, D]``).

    ``token_embeds [B, L, D]`` are the embeddings of ``input_ids``. Padding (``attention_mask == 0``) is dropped and
    re-added on ``padding_side``; padded positions get zero embeddings, mask 0, label -100 and position 0.
    """
    if token_embeds.shape[:2] != input_ids.shape or attention_mask.shape != input_ids.shape:
        raise ShapeError(f"token_embeds {tuple(token_embeds.shape)}, input_ids {tuple(input_ids.shape)} and "
                         f"attention_mask {tuple(attention_mask.shape)} disagree")
    if padding_side not in ("left", "right"):
        raise ShapeError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    pos = placeholder_positions(input_ids, attention_mask, placeholder_ids).tolist()
    if len(pos) != len(media_embeds):
        raise PromptError(f"the batch has {len(pos)} placeholders but {len(media_embeds)} media embeddings were given")
    bsz, _, dim = token_embeds.shape
    dtype, dev = token_embeds.dtype, token_embeds.device
    rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, list[tuple[int, int]]]] = []
    k = 0
    for b in range(bsz):
        real = attention_mask[b].bool()
        real_idx = real.nonzero().squeeze(-1)
        e_parts, id_parts, l_parts, m_parts = [], [], [], []
        spans: list[tuple[int, int]] = []
        cursor, length = 0, 0  # cursor: index into real_idx
        row_pos = [p for bb, p in pos[k:] if bb == b]
        for p in row_pos:
            j = int((real_idx == p).nonzero()[0, 0])
            seg = real_idx[cursor:j]
            e_parts.append(token_embeds[b, seg])
            id_parts.append(input_ids[b, seg])
            m_parts.append(torch.zeros(len(seg), dtype=torch.bool, device=dev))
            if labels is not None:
                l_parts.append(labels[b, seg])
            length += len(seg)
            emb = media_embeds[k]
            if emb.dim() != 2 or emb.shape[-1] != dim:
                raise ShapeError(f"media item {k} has embeddings of shape {tuple(emb.shape)}, expected [Q, {dim}]")
            q = emb.shape[0]
            e_parts.append(emb.to(dtype))
            id_parts.append(input_ids[b, p].expand(q))
            m_parts.append(torch.ones(q, dtype=torch.bool, device=dev))
            if labels is not None:
                l_parts.append(torch.full((q,), IGNORE_INDEX, dtype=labels.dtype, device=dev))
            spans.append((length, q))
            length += q
            cursor = j + 1
            k += 1
        seg = real_idx[cursor:]
        e_parts.append(token_embeds[b, seg])
        id_parts.append(input_ids[b, seg])
        m_parts.append(torch.zeros(len(seg), dtype=torch.bool, device=dev))
        if labels is not None:
            l_parts.append(labels[b, seg])
        rows.append((torch.cat(e_parts), torch.cat(id_parts), torch.cat(l_parts) if labels is not None else None,
                     torch.cat(m_parts), spans))
    width = max(r[0].shape[0] for r in rows)
    padded: list[torch.Tensor] = []
    mask = torch.zeros(bsz, width, dtype=attention_mask.dtype, device=dev)
    positions = torch.zeros(bsz, width, dtype=torch.long, device=dev)
    pad_id = int(input_ids[~attention_mask.bool()][0]) if bool((attention_mask == 0).any()) else 0
    token_ids = torch.full((bsz, width), pad_id, dtype=input_ids.dtype, device=dev)
    media_mask = torch.zeros(bsz, width, dtype=torch.bool, device=dev)
    new_labels = torch.full((bsz, width), IGNORE_INDEX, dtype=labels.dtype, device=dev) if labels is not None else None
    media_spans: list[tuple[int, int, int]] = []
    for b, (e, ids, lab, mm, spans) in enumerate(rows):
        n = e.shape[0]
        off = width - n if padding_side == "left" else 0
        sl = slice(off, off + n)
        # pad with F.pad and stack (no in-place writes) so gradients flow back into the bridge embeddings
        padded.append(torch.nn.functional.pad(e, (0, 0, off, width - n - off)))
        mask[b, sl] = 1
        positions[b, sl] = torch.arange(n, device=dev)
        token_ids[b, sl] = ids
        media_mask[b, sl] = mm
        if new_labels is not None and lab is not None:
            new_labels[b, sl] = lab
        media_spans.extend((b, off + s, q) for s, q in spans)
    embeds = torch.stack(padded)
    return SplicedInputs(embeds, mask, positions, token_ids, media_mask, new_labels, media_spans)
