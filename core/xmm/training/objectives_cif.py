"""``cif_tokens``: X-LLM's convert stage for a CIF bridge, with no LLM layer in the loop.

A CIF bridge (``cformer``) fires one vector per output token. Given the transcript's token count, it fires exactly
that many; each fired vector, after the C-Former and the adapter, is read through the frozen LLM's own input-embedding
table (tied to its LM head in SmolLM2) and trained with cross-entropy against the transcript token at its position.
The bridge thereby learns to emit the transcript's token embeddings, which the later ``lm`` stage teaches the LLM to
read out. The CIF quantity loss (``|sum(alpha) - n|``) from the same bridge forward is added with
``quantity_weight``, so the bridge learns to count the tokens it must fire when no count is given (inference).

:func:`read_out` is the matching probe: the tokens whose embeddings the fired vectors are nearest to (argmax through
the same table), decoded to text, without the LLM.
"""

from __future__ import annotations

from typing import Any

import torch

from xmm.objective import Objective, objective
from xmm.training.objectives import answer_tokens, media_features, unwrap


def _cif_groups(model: Any, batch: Any) -> dict[str, list[Any]]:
    """Media items of ``batch`` by modality, for modalities whose bridge takes ``target_lengths`` (CIF bridges)."""
    import inspect

    groups: dict[str, list[Any]] = {}
    for item in batch.media:
        bridge = model.bridges[item.modality] if item.modality in model.bridges else None
        if bridge is None or "target_lengths" not in inspect.signature(bridge.forward).parameters:
            continue
        groups.setdefault(item.modality, []).append(item)
    return groups


def transcript_tokens(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The answer tokens of each example without end-of-turn tokens: ids ``[B, La]`` and mask ``[B, La]``.

    These are what a CIF bridge fires for (the same count as the ``cif_quantity`` objective uses)."""
    ids, mask = answer_tokens(batch)
    eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is not None:
        mask = mask & (ids != eos)
    # end-of-turn tokens close the answer, so dropping them leaves each row's tokens left-aligned
    return ids, mask


@objective("cif_tokens", needs_output=False)
def cif_token_loss(model: Any, batch: Any, output: Any, *, quantity_weight: float = 1.0, embed_weight: float = 0.0,
                   label_smoothing: float = 0.0) -> torch.Tensor | None:
    """CIF convert stage: each fired vector against its transcript token through the LLM's embedding table.

    Cross-entropy of each CIF-fired bridge vector, read through the frozen LLM's input-embedding table, against
    the transcript token at its position (CIF fires exactly the transcript's token count), token mean over the
    batch; plus ``quantity_weight`` x the CIF quantity loss of the same forward, plus ``embed_weight`` x the squared
    distance of each vector to its token's embedding (relative to the embeddings' mean squared norm), which keeps
    the vectors where the LLM's own inputs are. No LLM layer runs. Averaged over modalities with a CIF bridge; None
    when the batch has none."""
    m = unwrap(model)
    if batch.labels is None or not batch.media:
        return None
    groups = _cif_groups(m, batch)
    if not groups:
        return None
    from xmm.encoder import EncoderOutput

    ids, valid = transcript_tokens(m, batch)
    lengths = valid.sum(1)
    weight = m.llm.get_input_embeddings().weight.detach()
    losses = []
    for modality, items in groups.items():
        enc = EncoderOutput.pad(media_features(model, items))
        rows = torch.tensor([it.batch_index for it in items], device=ids.device)
        out = m.bridges[modality](enc.features.to(m.device, torch.float32), enc.mask.to(m.device), modality=modality,
                                  target_lengths=lengths[rows].to(m.device))
        k = out.embeds.shape[1]
        target = ids[rows, :k].to(m.device)
        keep = valid[rows, :k].to(m.device) & out.mask.bool()
        if k == 0 or not bool(keep.any()):
            continue
        logits = out.embeds[keep] @ weight[: m.base_vocab_size].T.to(out.embeds.dtype)  # [N_tokens, V]
        loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], label_smoothing=label_smoothing)
        if embed_weight:
            want = weight[target[keep]].float()
            loss = loss + embed_weight * (out.embeds[keep].float() - want).pow(2).sum(-1).mean() / want.pow(2).sum(-1).mean()
        if quantity_weight and "cif_quantity" in out.aux:
            loss = loss + quantity_weight * out.aux["cif_quantity"]
        losses.append(loss)
    return torch.stack(losses).mean() if losses else None


@torch.no_grad()
def read_out(model: Any, items: list[Any], features: list[Any] | None = None) -> list[list[int]]:
    """Token ids whose input embeddings the fired vectors of each item are nearest to by dot product (the LM-head
    reading of a tied table), with CIF counting the tokens itself (inference). ``items`` are media items of one
    CIF modality; ``features`` their encoder outputs (computed when None)."""
    from xmm.encoder import EncoderOutput

    m = unwrap(model)
    if not items:
        return []
    modality = items[0].modality
    feats = features if features is not None else m.encode_media(items)
    enc = EncoderOutput.pad(list(feats))
    was_training = m.training
    m.eval()
    try:
        out = m.bridges[modality](enc.features.to(m.device, torch.float32), enc.mask.to(m.device), modality=modality)
    finally:
        m.train(was_training)
    weight = m.llm.get_input_embeddings().weight[: m.base_vocab_size].float()
    best = (out.embeds.float() @ weight.T).argmax(-1)
    return [best[i][out.mask[i].bool()].tolist() for i in range(best.shape[0])]


CIF_OBJECTIVES: tuple[Objective, ...] = (cif_token_loss,)
