"""``cif_tokens``: X-LLM's convert stage for a CIF bridge, with no LLM layer in the loop.

A CIF bridge (``cformer``) fires one vector per output token. Given the transcript's token count, it fires exactly
that many; each fired vector, after the C-Former and the adapter, is read through the frozen LLM's own input-embedding
table (tied to its LM head in SmolLM2) and trained with cross-entropy against the transcript token at its position.
The bridge thereby learns vectors that read as the transcript's tokens through that table, which the later ``lm``
stage teaches the LLM to read out. The CIF quantity loss (``|sum(alpha) - n|``) from the same bridge forward is added with
``quantity_weight``, so the bridge learns to count the tokens it must fire when no count is given (inference).

``metric`` says how a vector is read against the table. ``"dot"`` is the LM head's reading (logits = ``v . e``),
under which a long row can win over the row the vector is nearest to. ``"l2"`` scores each row by negative squared
distance (logits = ``2 v . e - |e|^2``; the ``|v|^2`` term is the same for every row), so a vector reads as the row it
is nearest to. Neither keeps the vectors at the embeddings' scale (the cross-entropy keeps growing them);
``embed_weight`` pulls them there, at a cost in read-out accuracy (plugins/xmm-plugin-speech/README.md "Measured").

:func:`read_out` is the matching probe: the tokens whose embeddings the fired vectors are nearest to (argmax through
the same table), decoded to text, without the LLM.
"""

from __future__ import annotations

from typing import Any, Literal

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
                   label_smoothing: float = 0.0, metric: Literal["dot", "l2"] = "dot") -> torch.Tensor | None:
    """CIF convert stage: each fired vector against its transcript token through the LLM's embedding table.

    Cross-entropy of each CIF-fired bridge vector, read through the frozen LLM's input-embedding table, against
    the transcript token at its position (CIF fires exactly the transcript's token count), token mean over the
    batch; plus ``quantity_weight`` x the CIF quantity loss of the same forward, plus ``embed_weight`` x the squared
    distance of each vector to its token's embedding (relative to the embeddings' mean squared norm), which keeps
    the vectors where the LLM's own inputs are. ``metric``: ``"dot"`` or ``"l2"`` (see the module docstring). No LLM
    layer runs. Averaged over modalities with a CIF bridge; None when the batch has none."""
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
        bridge = m.bridges[modality]
        out = bridge(enc.features.to(m.device, torch.float32), enc.mask.to(m.device), modality=modality,
                     target_lengths=lengths[rows].to(m.device))
        embeds, fired_mask = _fired(bridge, out)
        k = embeds.shape[1]
        target = ids[rows, :k].to(m.device)
        keep = valid[rows, :k].to(m.device) & fired_mask
        if k == 0 or not bool(keep.any()):
            continue
        logits = token_logits(embeds[keep], weight[: m.base_vocab_size], metric)  # [N_tokens, V]
        loss = torch.nn.functional.cross_entropy(logits.float(), target[keep], label_smoothing=label_smoothing)
        if embed_weight:
            want = weight[target[keep]].float()
            loss = loss + embed_weight * (embeds[keep].float() - want).pow(2).sum(-1).mean() / want.pow(2).sum(-1).mean()
        if quantity_weight and "cif_quantity" in out.aux:
            loss = loss + quantity_weight * out.aux["cif_quantity"]
        losses.append(loss)
    return torch.stack(losses).mean() if losses else None


def _fired(bridge: Any, out: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The fired vectors ``[B, K, d]`` and their mask ``[B, K]`` of a CIF bridge's output, without its learned
    prompt vectors (which stand for no token)."""
    p = int(getattr(bridge, "num_prompt_tokens", 0))
    return out.embeds[:, p:], out.mask[:, p:].bool()


def _check_metric(metric: str) -> None:
    if metric not in ("dot", "l2"):
        from xmm.errors import ConfigError

        raise ConfigError(f"cif_tokens: metric must be 'dot' or 'l2', got {metric!r}", field="metric")


def token_logits(vectors: torch.Tensor, table: torch.Tensor, metric: str = "dot") -> torch.Tensor:
    """Scores of vectors ``[N, D]`` against every row of an embedding table ``[V, D]`` -> ``[N, V]`` fp32.

    ``"dot"``: ``v . e``; ``"l2"``: ``-|v - e|^2 + |v|^2`` (the same argmax and softmax as the negative distance)."""
    _check_metric(metric)
    table = table.float()
    logits = vectors.float() @ table.T
    if metric == "l2":
        logits = 2 * logits - table.pow(2).sum(-1)[None]
    return logits


@torch.no_grad()
def read_out(model: Any, items: list[Any], features: list[Any] | None = None, *, metric: str = "dot") -> list[list[int]]:
    """Token ids whose input embeddings the fired vectors of each item are nearest to (by ``metric``, as the
    ``cif_tokens`` objective that trained them), with CIF counting the tokens itself (inference). ``items`` are media
    items of one CIF modality; ``features`` their encoder outputs (computed when None)."""
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
        bridge = m.bridges[modality]
        embeds, mask = _fired(bridge, bridge(enc.features.to(m.device, torch.float32), enc.mask.to(m.device),
                                             modality=modality))
    finally:
        m.train(was_training)
    weight = m.llm.get_input_embeddings().weight[: m.base_vocab_size]
    best = token_logits(embeds.flatten(0, 1), weight, metric).argmax(-1).view(embeds.shape[:2])
    return [best[i][mask[i]].tolist() for i in range(best.shape[0])]


CIF_OBJECTIVES: tuple[Objective, ...] = (cif_token_loss,)
