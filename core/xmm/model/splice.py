"""Splicing media embeddings into the LLM input where the placeholders are.

Each placeholder position (one token) is replaced by that item's ``Q_i`` bridge embeddings; ``attention_mask``,
``labels`` and ``position_ids`` are rebuilt to the new length with the batch's padding side kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from xmm.errors import PromptError, ShapeError

# the label of a position the loss skips (the value torch's cross_entropy ignores by default); defined only here
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
    pad_to_multiple_of: int | None = None,
) -> SplicedInputs:
    """Replace each placeholder in ``input_ids [B, L]`` by the next item of ``media_embeds`` (each ``[Q_i, D]``).

    ``token_embeds [B, L, D]`` are the embeddings of ``input_ids``. Padding (``attention_mask == 0``) is dropped and
    re-added on ``padding_side``; padded positions get zero embeddings, mask 0, label -100 and position 0.
    ``pad_to_multiple_of``: round the new length up to a multiple of it (a compiled LLM then sees a few shapes).

    Batched: every output row is one gather from the token and media embeddings by an index map built with tensor
    operations; the host reads the device once (the new row lengths and where each item starts).
    """
    if token_embeds.shape[:2] != input_ids.shape or attention_mask.shape != input_ids.shape:
        raise ShapeError(f"token_embeds {tuple(token_embeds.shape)}, input_ids {tuple(input_ids.shape)} and "
                         f"attention_mask {tuple(attention_mask.shape)} disagree")
    if padding_side not in ("left", "right"):
        raise ShapeError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    bsz, length, dim = token_embeds.shape
    dtype, dev = token_embeds.dtype, token_embeds.device
    for k, emb in enumerate(media_embeds):
        if emb.dim() != 2 or emb.shape[-1] != dim:
            raise ShapeError(f"media item {k} has embeddings of shape {tuple(emb.shape)}, expected [Q, {dim}]")
    n_items = len(media_embeds)
    sizes = [int(e.shape[0]) for e in media_embeds]
    real = attention_mask.bool()
    ids = torch.tensor(list(placeholder_ids), dtype=input_ids.dtype, device=dev)
    hit = torch.isin(input_ids, ids) & real
    # the items' (row, position) without a host read; checked against the count below
    pos = torch.nonzero_static(hit, size=n_items, fill_value=0) if n_items else hit.new_zeros(0, 2, dtype=torch.long)
    # positions each token takes in its new row: 1 per real token, Q_i for item i's placeholder, 0 for padding
    counts = real.long()
    q = torch.tensor(sizes, dtype=torch.long).to(dev, non_blocking=True)
    if n_items:
        counts = counts.index_put((pos[:, 0], pos[:, 1]), q)
    new_len = counts.sum(1)
    start = counts.cumsum(1) - counts  # [B, L]: where each token's positions begin (before left padding)
    host = torch.cat([hit.sum().view(1), new_len, start[pos[:, 0], pos[:, 1]], pos[:, 0]]).tolist()
    if host[0] != n_items:
        raise PromptError(f"the batch has {host[0]} placeholders but {n_items} media embeddings were given")
    lens = host[1 : 1 + bsz]
    item_start, item_row = host[1 + bsz : 1 + bsz + n_items], host[1 + bsz + n_items :]
    width = max(lens) if lens else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    off = (width - new_len) if padding_side == "left" else torch.zeros_like(new_len)
    total_media = sum(sizes)
    zero_row = bsz * length + total_media

    # index map [B, width + 1] into [token rows | media rows | a zero row]; the extra column takes the writes of
    # tokens that go nowhere (padding, placeholders) and is dropped
    text = real & ~hit
    dest = torch.where(text, start + off[:, None], torch.full_like(start, width))
    src = torch.arange(bsz * length, device=dev).view(bsz, length)
    index = torch.full((bsz, width + 1), zero_row, dtype=torch.long, device=dev)
    index.scatter_(1, dest, src)
    if n_items:
        item_of_row = torch.repeat_interleave(torch.arange(n_items, device=dev), q, output_size=total_media)
        first_row = torch.cumsum(q, 0) - q
        within = torch.arange(total_media, device=dev) - first_row[item_of_row]
        b_of_row = pos[item_of_row, 0]
        col = start[pos[:, 0], pos[:, 1]][item_of_row] + off[b_of_row] + within
        index[b_of_row, col] = bsz * length + torch.arange(total_media, device=dev)
    index = index[:, :width]

    table = [token_embeds.reshape(bsz * length, dim)]
    if n_items:
        table.append(torch.cat([e.to(dtype) for e in media_embeds]))
    table.append(token_embeds.new_zeros(1, dim))
    # one gather (no in-place writes) so gradients flow back into the token and bridge embeddings
    embeds = torch.cat(table)[index]

    cols = torch.arange(width, device=dev)
    mask_b = (cols >= off[:, None]) & (cols < (off + new_len)[:, None])
    mask = mask_b.to(attention_mask.dtype)
    positions = torch.where(mask_b, cols - off[:, None], 0)
    is_media = (index >= bsz * length) & (index < zero_row)
    # the id of the first padding position stands for padding (0 when there is none)
    no_pad = ~real.flatten()
    first_pad = input_ids.flatten()[no_pad.int().argmax()]
    pad_id = torch.where(no_pad.any(), first_pad, torch.zeros_like(first_pad)).view(1)
    placeholder_of_row = input_ids[pos[:, 0], pos[:, 1]][item_of_row] if n_items else input_ids.new_zeros(0)
    token_ids = torch.cat([input_ids.flatten(), placeholder_of_row, pad_id])[index]
    new_labels = None
    if labels is not None:
        ignore = torch.full((total_media + 1,), IGNORE_INDEX, dtype=labels.dtype, device=dev)
        new_labels = torch.cat([labels.flatten(), ignore])[index]
    offsets = [width - n for n in lens] if padding_side == "left" else [0] * bsz
    media_spans = [(b, offsets[b] + s, n) for b, s, n in zip(item_row, item_start, sizes)]
    return SplicedInputs(embeds, mask, positions, token_ids, is_media, new_labels, media_spans)
