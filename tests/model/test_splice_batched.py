"""The batched splice against the per-item reference it replaced (values, masks, spans and gradients)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from xmm.errors import PromptError, ShapeError
from xmm.model.splice import IGNORE_INDEX, SplicedInputs, placeholder_positions, splice

PH = (7, 8)  # placeholder ids of two modalities
PAD = 0


def reference_splice(  # the per-item loop the batched splice replaced

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


def _batch(seed: int, side: str, with_labels: bool) -> tuple[torch.Tensor, ...]:
    """Random rows of real tokens (some without media, some with several items) padded on ``side``."""
    g = torch.Generator().manual_seed(seed)
    bsz = int(torch.randint(1, 6, (1,), generator=g))
    rows, sizes = [], []
    for _ in range(bsz):
        n = int(torch.randint(1, 12, (1,), generator=g))
        row = torch.randint(10, 50, (n,), generator=g)
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):
            row[int(torch.randint(0, n, (1,), generator=g))] = PH[int(torch.randint(0, 2, (1,), generator=g))]
        rows.append(row)
    width = max(len(r) for r in rows)
    ids = torch.full((bsz, width), PAD)
    mask = torch.zeros(bsz, width, dtype=torch.long)
    for b, r in enumerate(rows):
        off = width - len(r) if side == "left" else 0
        ids[b, off : off + len(r)] = r
        mask[b, off : off + len(r)] = 1
    n_items = int(torch.isin(ids, torch.tensor(PH)).logical_and(mask.bool()).sum())
    sizes = [int(torch.randint(1, 5, (1,), generator=g)) for _ in range(n_items)]
    labels = torch.where(torch.rand(ids.shape, generator=g) < 0.5, ids, IGNORE_INDEX) if with_labels else None
    return ids, mask, labels, sizes  # type: ignore[return-value]


def _check_same(new: SplicedInputs, ref: SplicedInputs) -> None:
    assert torch.equal(new.inputs_embeds, ref.inputs_embeds)
    for name in ("attention_mask", "position_ids", "token_ids", "media_mask", "labels"):
        a, b = getattr(new, name), getattr(ref, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.dtype == b.dtype and torch.equal(a, b), name
    assert new.media_spans == ref.media_spans


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_batched_splice_equals_the_per_item_reference(seed: int, side: str, with_labels: bool) -> None:
    ids, mask, labels, sizes = _batch(seed, side, with_labels)
    dim = 5
    tok = torch.randn(*ids.shape, dim, requires_grad=True)
    media = [torch.randn(q, dim, requires_grad=True) for q in sizes]
    new = splice(tok, ids, mask, media, PH, labels=labels, padding_side=side)
    ref = reference_splice(tok, ids, mask, media, PH, labels=labels, padding_side=side)
    _check_same(new, ref)
    # gradients reach the token embeddings and every item's bridge embeddings as before
    weight = torch.randn_like(new.inputs_embeds)
    grads_new = torch.autograd.grad((new.inputs_embeds * weight).sum(), [tok, *media], allow_unused=True)
    grads_ref = torch.autograd.grad((ref.inputs_embeds * weight).sum(), [tok, *media], allow_unused=True)
    for a, b in zip(grads_new, grads_ref):
        assert torch.equal(a, b)


def test_batched_splice_keeps_the_embedding_dtype() -> None:
    ids = torch.tensor([[5, 7, 6, PAD]])
    mask = torch.tensor([[1, 1, 1, 0]])
    out = splice(torch.zeros(1, 4, 3, dtype=torch.bfloat16), ids, mask, [torch.ones(2, 3)], PH)
    assert out.inputs_embeds.dtype == torch.bfloat16
    assert out.inputs_embeds[0, 1:3].float().eq(1).all() and out.media_spans == [(0, 1, 2)]


def test_batched_splice_errors() -> None:
    ids = torch.tensor([[5, 7, 6]])
    with pytest.raises(PromptError, match="1 placeholders but 2 media"):
        splice(torch.zeros(1, 3, 4), ids, torch.ones_like(ids), [torch.zeros(1, 4)] * 2, PH)
    with pytest.raises(ShapeError, match="padding_side"):
        splice(torch.zeros(1, 3, 4), ids, torch.ones_like(ids), [torch.zeros(1, 4)], PH, padding_side="middle")
