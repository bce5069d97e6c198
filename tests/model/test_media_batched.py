"""Batched media helpers (turn contexts in one gather, features concatenated, masked rows as views) against the
per-item functions they replaced in the forward pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from xmm.encoder import EncoderOutput
from xmm.model.media import bridge_items, masked_rows, turn_contexts, turn_text_embeddings
from xmm.model.messages import MediaItem
from xmm.registry import get_registry

D_LLM, D_ENC = 16, 6
PH = {"a": 3, "b": 4}


def _items() -> tuple[torch.Tensor, list[MediaItem]]:
    """Three rows: two items (different modalities) in one turn, an item whose turn is only its placeholder, an item
    without a turn, and an item in a later turn of a row."""
    ids = torch.tensor([[1, 3, 5, 6, 4, 7, 2, 9, 9],
                        [1, 4, 2, 8, 8, 3, 5, 2, 0],
                        [1, 3, 2, 0, 0, 0, 0, 0, 0]])
    spec = SimpleNamespace(placeholder="<x>")
    layout = [("a", 0, 1, (1, 6)), ("b", 0, 4, (1, 6)), ("b", 1, 1, (1, 2)), ("a", 1, 5, (3, 8)), ("a", 2, 1, None)]
    items = [MediaItem(m, f"{m}{i}", spec, batch_index=b, position=p, context=c)  # type: ignore[arg-type]
             for i, (m, b, p, c) in enumerate(layout)]
    return ids, items


def test_turn_contexts_equal_the_per_item_turn_text() -> None:
    ids, items = _items()
    token_embeds = torch.randn(*ids.shape, D_LLM)
    ctx = turn_contexts(token_embeds, items)
    assert ctx is not None
    for i, it in enumerate(items):
        ref = turn_text_embeddings(token_embeds, ids, it, PH.values())
        if ref is None:
            assert ctx.lengths[i] is None and not ctx.mask[i].any()
            continue
        n = ref.shape[0]
        assert ctx.lengths[i] == n and torch.equal(ctx.embeds[i, :n], ref)
        assert ctx.mask[i, :n].all() and not ctx.mask[i, n:].any() and not ctx.embeds[i, n:].any()
    assert turn_contexts(token_embeds, [items[-1]]) is None


@pytest.mark.parametrize("bridge_type", ["guided-mlp", "mlp"])
def test_bridge_items_with_batched_contexts_equal_the_per_item_path(bridge_type: str) -> None:
    torch.manual_seed(0)
    ids, items = _items()
    reg = get_registry()
    bridge = reg.create_bridge({"type": bridge_type, "input_dim": D_ENC, "output_dim": D_LLM})
    bridges = {"a": bridge, "b": bridge}
    token_embeds = torch.randn(*ids.shape, D_LLM)
    feats = [EncoderOutput(torch.randn(1, 4, D_ENC), torch.ones(1, 4, dtype=torch.bool)) for _ in items]
    per_item = [turn_text_embeddings(token_embeds, ids, it, PH.values()) for it in items]
    ref, ref_aux, ref_groups = bridge_items(bridges, items, feats, per_item, torch.device("cpu"))
    new, new_aux, new_groups = bridge_items(bridges, items, feats, turn_contexts(token_embeds, items),
                                            torch.device("cpu"))
    assert new_groups == ref_groups
    assert len(new) == len(ref) and all(torch.equal(a, b) for a, b in zip(new, ref))
    for m in ref_aux:
        assert all(torch.equal(new_aux[m][k], ref_aux[m][k]) for k in ref_aux[m])


def test_features_of_different_lengths_are_padded_as_before() -> None:
    torch.manual_seed(0)
    _, items = _items()
    bridge = get_registry().create_bridge({"type": "mlp", "input_dim": D_ENC, "output_dim": D_LLM})
    lengths = [4, 2, 4, 3, 1]
    feats = [EncoderOutput(torch.randn(1, n, D_ENC), torch.ones(1, n, dtype=torch.bool)) for n in lengths]
    out, _, _ = bridge_items({"a": bridge, "b": bridge}, items, feats, None, torch.device("cpu"))
    assert [e.shape[0] for e in out] == lengths
    for e, f in zip(out, feats):
        alone, _, _ = bridge_items({"a": bridge}, [items[0]], [f], None, torch.device("cpu"))
        assert torch.allclose(e, alone[0], atol=1e-6)


def test_masked_rows() -> None:
    embeds = torch.arange(24.0).view(2, 3, 4)
    full = masked_rows(embeds, torch.ones(2, 3, dtype=torch.bool))
    assert [r.data_ptr() for r in full] == [embeds[0].data_ptr(), embeds[1].data_ptr()]  # views, no copy
    part = masked_rows(embeds, torch.tensor([[True, False, True], [False, False, False]]))
    assert torch.equal(part[0], embeds[0, [0, 2]]) and part[1].shape == (0, 4)
