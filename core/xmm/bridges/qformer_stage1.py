"""BLIP-2's stage-1 objectives for a :class:`~xmm.bridges.qformer.QFormerBridge` (X-LLM's stage 1).

* ITC (media-text contrastive): the text's [CLS] feature against each query output, the best query per pair; in-batch
  negatives (all processes' batches under ``torch.distributed``); learnable temperature; label smoothing 0.1.
* ITM (media-text matching): queries and text attend to each other (bidirectional mask); for every media item one hard
  negative text and for every text one hard negative media item are drawn within the batch with probability
  ``softmax(similarity)``; a binary head on the query outputs, averaged over the queries.
* ITG (media-grounded text generation): text tokens, led by [DEC], attend to all queries and causally to earlier text;
  the queries never see the text, so the text has to take the media through them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from xmm.bridges._layers import key_mask
from xmm.errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from xmm.bridges.qformer import QFormerBridge, QFormerTextBranch

OBJECTIVES = ("itc", "itm", "itg")


def stage1_losses(
    bridge: QFormerBridge,
    features: torch.Tensor,
    mask: torch.Tensor | None,
    text_ids: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    *,
    modality: str | None = None,
    objectives: Iterable[str] = OBJECTIVES,
) -> dict[str, torch.Tensor]:
    """features ``[B, T, D_enc]`` (mask ``[B, T]``), text_ids ``[B, L]`` (text_mask ``[B, L]``) -> {objective: scalar}."""
    wanted = list(objectives)
    unknown = [o for o in wanted if o not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown stage-1 objectives {unknown}; known: {list(OBJECTIVES)}", field="objectives")
    text = bridge.text
    if text is None:
        raise ConfigError("stage-1 objectives need the text branch; build the Q-Former with text_branch=true", field="text_branch")
    valid = bridge.check_input(features, mask)
    b = features.shape[0]
    if text_ids.dim() != 2 or text_ids.shape[0] != b:
        raise ShapeError(f"text_ids must have shape [B, L] with B = {b}, got {tuple(text_ids.shape)}")
    if text_ids.shape[1] + 1 > bridge.config.max_text_length:
        raise ShapeError(
            f"text_ids has {text_ids.shape[1]} tokens; with [CLS]/[DEC] at most max_text_length - 1 = "
            f"{bridge.config.max_text_length - 1} fit"
        )
    tmask = torch.ones_like(text_ids, dtype=torch.bool) if text_mask is None else text_mask.bool()
    if tmask.shape != text_ids.shape:
        raise ShapeError(f"text_mask must have shape {tuple(text_ids.shape)} like text_ids, got {tuple(tmask.shape)}")
    if text_ids.numel() and (int(text_ids.min()) < 0 or int(text_ids.max()) >= text.vocab_size):
        raise ShapeError(f"text_ids must lie in [0, vocab_size={text.vocab_size}), got [{int(text_ids.min())}, {int(text_ids.max())}]")

    with torch.no_grad():
        text.temp.clamp_(0.001, 0.5)  # as BLIP-2
    kvs = bridge.encoder_kv(features)
    cross = key_mask(valid)
    nq = bridge.config.num_queries
    ones = torch.ones(b, 1, dtype=torch.bool, device=text_ids.device)
    cls_mask = torch.cat([ones, tmask], dim=1)
    cls_embeds, dec_embeds = _text_embeds(text, text_ids, with_dec="itg" in wanted)
    losses: dict[str, torch.Tensor] = {}

    # unimodal passes: the queries alone (cross-attending), the text alone
    q_hidden = bridge.run(bridge.query_embeds(b, modality), nq, None, kvs, cross)
    media_feats = F.normalize(text.vision_proj(q_hidden).float(), dim=-1)  # [B, Q, E]
    t_embeds = bridge.embed_dropout(bridge.embed_norm(cls_embeds))
    t_hidden = bridge.run(t_embeds, 0, cls_mask[:, None, None, :], None, None)
    text_feat = F.normalize(text.text_proj(t_hidden[:, 0]).float(), dim=-1)  # [B, E]

    sim_i2t, offset = _similarities(media_feats, text_feat, text.temp)
    targets = torch.arange(b, device=sim_i2t.device) + offset
    if "itc" in wanted:
        ls = bridge.config.label_smoothing
        sim_t2i = _t2i(media_feats, text_feat, text.temp)
        losses["itc"] = (F.cross_entropy(sim_i2t, targets, label_smoothing=ls) + F.cross_entropy(sim_t2i, targets, label_smoothing=ls)) / 2

    if "itm" in wanted:
        local = sim_i2t.detach()[:, offset : offset + b]  # hard negatives come from this process's batch
        losses["itm"] = _itm(bridge, kvs, cross, cls_embeds, cls_mask, local, modality)

    if "itg" in wanted:
        assert dec_embeds is not None
        n = dec_embeds.shape[1]
        h = bridge.query_embeds(b, modality, dec_embeds)
        # queries see queries; text sees every query and the valid text up to itself
        allow = torch.zeros(b, nq + n, nq + n, dtype=torch.bool, device=h.device)
        allow[:, :, :nq] = True
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        allow[:, nq:, nq:] = causal[None] & cls_mask[:, None, :]
        out = bridge.run(h, nq, allow[:, None], kvs, cross)
        # position i predicts text token i; the vocabulary head (the costly part: [N, H] x [H, vocab]) runs on the
        # valid tokens only, which is the masked mean over every position without the padding's wasted logits
        logits = text.lm_logits(out[:, nq:-1][tmask]).float()
        losses["itg"] = F.cross_entropy(logits, text_ids[tmask], label_smoothing=bridge.config.label_smoothing)
    return losses


def _gather(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate ``x`` over the processes of ``torch.distributed`` (this process's part keeps its gradient)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = x
    return torch.cat(parts, dim=0), rank * x.shape[0]


def _similarities(media: torch.Tensor, text: torch.Tensor, temp: torch.Tensor) -> tuple[torch.Tensor, int]:
    """media ``[B, Q, E]`` x every process's text ``[N, E]`` -> best-query similarity ``[B, N]`` / temp, and the
    offset of this process's items among the N."""
    all_text, offset = _gather(text)
    return torch.einsum("bqe,ne->bnq", media, all_text).amax(dim=-1) / temp, offset


def _t2i(media: torch.Tensor, text: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """text ``[B, E]`` x every process's media ``[N, Q, E]`` -> ``[B, N]`` / temp."""
    all_media, _ = _gather(media)
    return torch.einsum("be,nqe->bnq", text, all_media).amax(dim=-1) / temp


def _text_embeds(text: QFormerTextBranch, text_ids: torch.Tensor, *, with_dec: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Word + position embeddings ``[B, L+1, H]`` of the text led by [CLS] (ITC, ITM) and, if asked, by [DEC] (ITG).

    One lookup of the word-embedding table serves every objective (the table is the size of the vocabulary: each
    separate lookup would back-propagate into its own dense ``[vocab, H]`` gradient, and those would be summed).
    Equal to ``text.embed`` of the [CLS]/[DEC]-led ids.
    """
    b, n = text_ids.shape
    special = torch.tensor([text.cls_id, text.dec_id], dtype=text_ids.dtype, device=text_ids.device)
    rows = text.word_embeddings(torch.cat([special, text_ids.reshape(-1)]))
    words = rows[2:].view(b, n, -1)
    pos = text.position_embeddings(torch.arange(n + 1, device=text_ids.device))[None]
    cls = torch.cat([rows[0].expand(b, 1, -1), words], dim=1) + pos
    dec = torch.cat([rows[1].expand(b, 1, -1), words], dim=1) + pos if with_dec else None
    return cls, dec


def _itm(
    bridge: QFormerBridge,
    kvs: list[torch.Tensor],
    cross: torch.Tensor | None,
    embeds: torch.Tensor,
    tmask: torch.Tensor,
    sim: torch.Tensor,
    modality: str | None,
) -> torch.Tensor:
    """Matching loss on (media, text) positives and one hard negative of each kind per item (sim ``[B, B]``);
    ``embeds [B, L, H]`` are the [CLS]-led text embeddings, ``tmask [B, L]`` their mask."""
    text = bridge.text
    assert text is not None
    b, dev = embeds.shape[0], embeds.device
    idx = torch.arange(b, device=dev)
    if b > 1:
        with torch.no_grad():
            off_diag = sim.float().masked_fill(torch.eye(b, dtype=torch.bool, device=sim.device), float("-inf"))
            neg_text = torch.multinomial(F.softmax(off_diag, dim=1), 1).squeeze(1)  # for each media item
            neg_media = torch.multinomial(F.softmax(off_diag.t(), dim=1), 1).squeeze(1)  # for each text
        media_idx = torch.cat([idx, neg_media, idx])
        text_idx = torch.cat([idx, idx, neg_text])
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(dev)
    else:  # a single pair has no negative in its batch
        media_idx, text_idx, labels = idx, idx, torch.ones(1, dtype=torch.long, device=dev)
    nq = bridge.config.num_queries
    n = media_idx.shape[0]
    h = bridge.query_embeds(n, modality, embeds[text_idx])
    keys = torch.cat([torch.ones(n, nq, dtype=torch.bool, device=dev), tmask[text_idx]], dim=1)
    out = bridge.run(h, nq, keys[:, None, None, :], [kv[media_idx] for kv in kvs], None if cross is None else cross[media_idx])
    logits = text.itm_head(out[:, :nq]).float().mean(dim=1)
    return F.cross_entropy(logits, labels)
