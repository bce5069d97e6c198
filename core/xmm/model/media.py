"""The media half of a forward pass: encoding items, bridging them to LLM embeddings, the text of an item's chat turn
(for instruction-aware bridges), and how many LLM positions an item takes (asked of its encoder and bridge)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xmm.encoder import Encoder, EncoderOutput
from xmm.model.messages import MediaItem


def group_by_modality(items: Sequence[MediaItem]) -> dict[str, list[int]]:
    """Indices of ``items`` per modality, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.modality, []).append(i)
    return groups


def encode_items(encoders: Mapping[str, Encoder], items: Sequence[MediaItem]) -> list[EncoderOutput]:
    """Run each item's encoder, batched per modality: one ``EncoderOutput`` per item, features ``[1, T_i, D]``.
    Frozen encoders run without gradients; trainable ones (e.g. device) keep them. An item whose
    :data:`PREPROCESSED` attribute holds its encoder's :meth:`~xmm.encoder.Encoder.preprocess` output (a training
    data loader prepares it in its worker processes) is not loaded or preprocessed again."""
    out: list[EncoderOutput | None] = [None] * len(items)
    for modality, idx in group_by_modality(items).items():
        enc = encoders[modality]
        if own_encode(enc):
            batch = enc.encode([items[i].load() for i in idx])
        else:
            batch = encode_prepared(enc, [prepared_inputs(enc, items[i]) for i in idx])
        for i, o in zip(idx, batch.split()):
            out[i] = o
    return [o for o in out if o is not None]


# the attribute of a MediaItem that may hold its encoder's preprocess() output, made ahead of the forward pass
PREPROCESSED = "preprocessed"


def own_encode(encoder: Encoder) -> bool:
    """True when ``encoder`` overrides :meth:`Encoder.encode` (then items go to it loaded, never preprocessed
    ahead)."""
    return getattr(type(encoder), "encode", Encoder.encode) is not Encoder.encode


def prepared_inputs(encoder: Encoder, item: MediaItem) -> dict[str, torch.Tensor]:
    """``encoder.preprocess`` of ``item``'s loaded input, or what :data:`PREPROCESSED` already holds."""
    ready = getattr(item, PREPROCESSED, None)
    return ready if ready is not None else encoder.preprocess(item.load())


def encode_prepared(encoder: Encoder, inputs: Sequence[dict[str, torch.Tensor]]) -> EncoderOutput:
    """:meth:`Encoder.encode` from preprocessed items: collate, copy to the encoder's device, forward (no gradients
    when the encoder is frozen)."""
    batch = encoder.collate(list(inputs))
    device = encoder.device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    with torch.set_grad_enabled(torch.is_grad_enabled() and not encoder.frozen):
        return encoder(**batch)


@dataclass
class TurnContexts:
    """The text of each item's chat turn as LLM embeddings, batched: ``embeds [N, L, d_llm]`` right-padded,
    ``mask [N, L]`` True on text (placeholders left out), ``lengths``: each row's text positions (None: the item
    has no turn); row ``i`` is item ``i``. What :func:`turn_contexts` builds in one gather instead of one
    :func:`turn_text_embeddings` per item."""

    embeds: torch.Tensor
    mask: torch.Tensor
    lengths: list[int | None] = field(default_factory=list)

    def rows(self, idx: Sequence[int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(context [n, L, d] float32, context_mask [n, L])`` of the items ``idx``, as a bridge's ``context`` /
        ``context_mask``: trimmed to their longest turn (at least one position); ``(None, None)`` when none of them
        has a turn (what :func:`pad_context` gives)."""
        lengths = [self.lengths[i] for i in idx]
        if all(n is None for n in lengths):
            return None, None
        width = max(1, max(n or 0 for n in lengths))
        sel = torch.tensor(list(idx), dtype=torch.long).to(self.embeds.device, non_blocking=True)
        return self.embeds[sel, :width].float(), self.mask[sel, :width]


def turn_contexts(token_embeds: torch.Tensor, items: Sequence[MediaItem],
                  batch_items: Sequence[MediaItem] | None = None) -> TurnContexts | None:
    """Every item's turn text (``item.context`` positions of row ``item.batch_index``, placeholders left out) as one
    :class:`TurnContexts`, from the collator's positions alone (no read of the device); None when no item has a turn.

    The placeholders inside a turn are the media items of its row: those of ``batch_items`` (every item of the
    collated batch; default ``items``), whose positions the collator checked against the placeholder tokens, so the
    kept positions are known on the host and the embeddings are one gather from ``token_embeds [B, L_all, d]``.
    """
    if not any(it.context is not None for it in items):
        return None
    media_at: dict[int, set[int]] = {}
    for it in batch_items if batch_items is not None else items:
        media_at.setdefault(it.batch_index, set()).add(it.position)
    keep: list[list[int] | None] = []
    for it in items:
        if it.context is None:
            keep.append(None)
            continue
        start, end = it.context
        skip = media_at.get(it.batch_index, set())
        keep.append([p for p in range(start, end) if p not in skip])
    width = max(1, max(len(k) for k in keep if k is not None))
    lengths = [len(k) if k else 0 for k in keep]
    # one tensor from padded lists (no tensor op per item)
    cols = torch.tensor([(k or []) + [0] * (width - n) for k, n in zip(keep, lengths)], dtype=torch.long)
    mask = torch.arange(width) < torch.tensor(lengths)[:, None]
    rows = torch.tensor([[it.batch_index] for it in items], dtype=torch.long)
    dev = token_embeds.device
    rows, cols, mask = (t.to(dev, non_blocking=True) for t in (rows, cols, mask))
    embeds = torch.where(mask[..., None], token_embeds[rows.clamp(min=0), cols], 0.0)
    return TurnContexts(embeds, mask, [len(k) if k is not None else None for k in keep])


def _batch_features(features: Sequence[EncoderOutput]) -> EncoderOutput:
    """Per-item features ``[1, T_i, D]`` as one batch: one concatenation when every item has the same ``T``."""
    if len({f.features.shape[1:] for f in features}) == 1:
        return EncoderOutput(torch.cat([f.features for f in features]), torch.cat([f.mask for f in features]))
    return EncoderOutput.pad(features)


def bridge_items(
    bridges: Mapping[str, nn.Module], items: Sequence[MediaItem], features: Sequence[EncoderOutput],
    contexts: Sequence[torch.Tensor | None] | TurnContexts | None, device: torch.device,
) -> tuple[list[torch.Tensor], dict[str, dict[str, torch.Tensor]], dict[str, list[int]]]:
    """Each item's features through its modality's bridge (batched per modality) on ``device``.

    Returns the embeddings ``[Q_i, d_llm]`` of each item (its bridge's masked rows), the bridges' aux tensors per
    modality and, per modality, the item indices in the order of those aux rows. ``contexts``: the LLM embeddings of
    each item's turn text, given to bridges with ``uses_context`` (InstructBLIP-style): a :class:`TurnContexts`
    (batched) or, per item, ``[L_i, d_llm]`` or None.
    """
    embeds: list[torch.Tensor | None] = [None] * len(items)
    aux: dict[str, dict[str, torch.Tensor]] = {}
    groups = group_by_modality(items)
    for modality, idx in groups.items():
        batch = _batch_features([features[i] for i in idx])
        bridge = bridges[modality]
        kwargs: dict[str, Any] = {}
        if getattr(bridge, "uses_context", False):
            if isinstance(contexts, TurnContexts):
                kwargs["context"], kwargs["context_mask"] = contexts.rows(idx)
            else:
                ctx = [contexts[i] if contexts is not None else None for i in idx]
                kwargs["context"], kwargs["context_mask"] = pad_context(ctx, device)
        bout = bridge(batch.features.to(device, torch.float32, non_blocking=True),
                      batch.mask.to(device, non_blocking=True), modality=modality, **kwargs)
        aux[modality] = dict(bout.aux)
        for i, e in zip(idx, masked_rows(bout.embeds, bout.mask)):
            embeds[i] = e
    return [e for e in embeds if e is not None], aux, groups


def masked_rows(embeds: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """Row ``b`` of ``embeds [B, Q, d]`` restricted to ``mask[b]`` (``[Q_b, d]``), for every row: views of the
    rows when every mask is full (one read of the device for the counts), else one masked selection split by
    count."""
    valid = mask.bool()
    counts = valid.sum(1).tolist()
    if all(c == valid.shape[1] for c in counts):
        return list(embeds.unbind(0))
    return list(embeds[valid].split(counts))


def turn_text_embeddings(token_embeds: torch.Tensor, input_ids: torch.Tensor, item: MediaItem,
                         placeholder_ids: Iterable[int]) -> torch.Tensor | None:
    """The embeddings ``[L, d]`` of the text in ``item``'s chat turn (placeholders left out); None when unknown.

    ``token_embeds [B, L_all, d]`` and ``input_ids [B, L_all]`` are the collated batch's; ``item.context`` gives the
    turn's ``(start, end)`` positions in row ``item.batch_index``.
    """
    if item.context is None:
        return None
    start, end = item.context
    ids = input_ids[item.batch_index, start:end]
    keep = ~torch.isin(ids, torch.tensor(list(placeholder_ids), device=ids.device))
    return token_embeds[item.batch_index, start:end][keep]


def pad_context(ctx: Sequence[torch.Tensor | None], device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Right-pad per-item context embeddings ``[L_i, d]`` to ``[N, L, d]`` with a mask ``[N, L]``; ``(None, None)``
    when every item has none."""
    present = [c for c in ctx if c is not None]
    if not present:
        return None, None
    d = present[0].shape[-1]
    n = max(1, max(c.shape[0] for c in present))
    out = torch.zeros(len(ctx), n, d, device=device, dtype=torch.float32)
    mask = torch.zeros(len(ctx), n, dtype=torch.bool, device=device)
    for i, c in enumerate(ctx):
        if c is not None and c.shape[0]:
            out[i, : c.shape[0]] = c.float()
            mask[i, : c.shape[0]] = True
    return out, mask


def bridge_output_tokens(bridge: nn.Module, num_input_tokens: int | None, modality: str | None) -> int | None:
    """``bridge.num_output_tokens(num_input_tokens, modality=...)``; a bridge written against the older
    ``num_output_tokens(modality)`` signature is still asked, with a :class:`DeprecationWarning`."""
    method = getattr(bridge, "num_output_tokens", None)
    if method is None:
        return None
    params = list(inspect.signature(method).parameters)
    if params and params[0] == "modality":
        warnings.warn(f"{type(bridge).__name__}.num_output_tokens(modality) is the old signature; implement "
                      "num_output_tokens(num_input_tokens=None, *, modality=None)", DeprecationWarning, stacklevel=2)
        q = method(modality)
    else:
        q = method(num_input_tokens, modality=modality)
    return int(q) if q is not None else None


def media_token_count(encoder: Any, bridge: nn.Module, modality: str) -> int | None:
    """LLM positions one item of ``modality`` takes: the bridge's output count for the encoder's token count.

    None when it depends on the input itself (a variable-length encoder feeding a per-token bridge, or a bridge
    that decides how many tokens to emit, such as CIF): then only the forward pass knows.
    """
    count = getattr(encoder, "num_output_tokens", None)
    return bridge_output_tokens(bridge, count() if callable(count) else None, modality)
