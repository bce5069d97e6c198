"""Q-Former: output-equal to transformers' Blip2QFormerModel after import; BLIP-2's stage-1 objectives."""

from __future__ import annotations

import pytest
import torch
from transformers import Blip2Config, Blip2Model, Blip2QFormerConfig, Blip2QFormerModel
from xmm.bridges._frozen import norm_linear, normalize_frozen
from xmm.bridges.qformer import QFormerBridge, QFormerConfig
from xmm.errors import CheckpointError, ConfigError, ShapeError

QCFG = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48, encoder_hidden_size=24,
            vocab_size=40, max_position_embeddings=16)


def _features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 24, generator=g)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return x, mask


@pytest.mark.parametrize("text_input", [False, True])
@pytest.mark.parametrize("frequency", [1, 2])
def test_matches_blip2_qformer_model_after_import(text_input, frequency):
    torch.manual_seed(0)
    ref = Blip2QFormerModel(Blip2QFormerConfig(**QCFG, cross_attention_frequency=frequency, use_qformer_text_input=text_input)).eval()
    ours = QFormerBridge.from_blip2(ref, output_dim=20).eval()
    assert ours.config.text_branch is text_input
    assert [layer.crossattention is not None for layer in ours.layers] == [i % frequency == 0 for i in range(3)]
    with torch.no_grad():  # a trained ln_vision, not the identity-like init
        ours.encoder_norm.weight.uniform_(0.5, 1.5)
        ours.encoder_norm.bias.normal_()
    x, mask = _features()
    queries = ours.queries["default"][None].expand(3, -1, -1)
    with torch.no_grad():
        want = ref(query_embeds=queries, encoder_hidden_states=ours.encoder_norm(x), encoder_attention_mask=mask.long())
        got = ours.query_hidden(x, mask)
    torch.testing.assert_close(got, want.last_hidden_state, atol=1e-5, rtol=0)
    # the bridge's output is the adapter over those, with the encoder gradient path (no frozen shortcut) agreeing too
    x_grad = x.clone().requires_grad_(True)
    torch.testing.assert_close(ours(x_grad, mask).embeds, ours.proj(want.last_hidden_state), atol=1e-5, rtol=0)


def test_from_blip2_model_brings_queries_ln_vision_and_projection():
    cfg = Blip2Config(
        vision_config=dict(hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
        qformer_config=dict(QCFG),
        text_config=dict(model_type="opt", hidden_size=36, num_hidden_layers=1, num_attention_heads=2, ffn_dim=40,
                         vocab_size=50, word_embed_proj_dim=36),
        num_query_tokens=5,
    )
    torch.manual_seed(0)
    model = Blip2Model(cfg).eval()
    with torch.no_grad():
        model.vision_model.post_layernorm.bias.normal_()
    bridge = QFormerBridge.from_blip2(model).eval()
    assert bridge.config.num_queries == 5 and bridge.config.output_dim == 36 and bridge.config.input_dim == 24
    torch.testing.assert_close(bridge.queries["default"], model.query_tokens[0])
    x, _ = _features()
    with torch.no_grad():
        enc = model.vision_model.post_layernorm(x)
        want = model.qformer(query_embeds=model.query_tokens.expand(3, -1, -1), encoder_hidden_states=enc).last_hidden_state
        want = model.language_projection(want)
        got = bridge(x).embeds
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_blip2_import_is_strict():
    ref = Blip2QFormerModel(Blip2QFormerConfig(**QCFG))
    ours = QFormerBridge.from_config(QFormerConfig(input_dim=24, output_dim=8, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48))
    with pytest.raises(CheckpointError, match="no place for"):
        ours.load_blip2_qformer_state_dict(ref.state_dict())  # 3 layers into 2
    state = ref.state_dict()
    del state["encoder.layer.0.crossattention.attention.key.weight"]
    with pytest.raises(CheckpointError, match="missing 'encoder.layer.0.crossattention.attention.key.weight'"):
        QFormerBridge.from_blip2(Blip2QFormerModel(Blip2QFormerConfig(**QCFG))).load_blip2_qformer_state_dict(state)
    wide = QFormerBridge.from_config(QFormerConfig(input_dim=24, output_dim=8, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=48))
    with pytest.raises(CheckpointError, match="has shape"):
        wide.load_blip2_qformer_state_dict(ref.state_dict())


def test_frozen_encoder_shortcut_has_the_autograd_gradients():
    torch.manual_seed(0)
    ln = torch.nn.LayerNorm(24)
    lin = torch.nn.Linear(24, 10)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    x = torch.randn(2, 7, 24)
    w = torch.randn(2, 7, 10)
    (lin(ln(x)) * w).sum().backward()
    want = [p.grad.clone() for p in (ln.weight, ln.bias, lin.weight, lin.bias)]
    for p in (ln.weight, ln.bias, lin.weight, lin.bias):
        p.grad = None
    y = norm_linear(normalize_frozen(x, ln.eps, torch.float32), ln.weight, ln.bias, lin.weight, lin.bias)
    torch.testing.assert_close(y, lin(ln(x)), atol=1e-5, rtol=1e-5)
    (y * w).sum().backward()
    for p, g in zip((ln.weight, ln.bias, lin.weight, lin.bias), want):
        torch.testing.assert_close(p.grad, g, atol=1e-4, rtol=1e-4)


def _stage1_bridge(**kw) -> QFormerBridge:
    torch.manual_seed(0)
    cfg = QFormerBridge.tiny_config(24, 16).model_copy(update={"text_branch": True, "vocab_size": 50, "max_text_length": 12, **kw})
    return QFormerBridge(QFormerConfig.model_validate(cfg.model_dump()))


def _text():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 50, (3, 6), generator=g)
    tmask = torch.ones(3, 6, dtype=torch.bool)
    tmask[2, 3:] = False
    return ids, tmask


def test_stage1_losses_are_finite_and_train_every_parameter():
    bridge = _stage1_bridge().train()
    x, mask = _features()
    ids, tmask = _text()
    torch.manual_seed(0)
    losses = bridge.stage1_losses(x, mask, ids, tmask)
    assert set(losses) == {"itc", "itm", "itg"}
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    # untrained: ITC near log(B), ITM near log(2), ITG near log(vocab)
    assert abs(losses["itc"].item() - torch.log(torch.tensor(3.0)).item()) < 0.6
    assert abs(losses["itm"].item() - 0.693) < 0.3
    assert abs(losses["itg"].item() - torch.log(torch.tensor(50.0)).item()) < 1.0
    sum(losses.values()).backward()
    # the adapter is trained in stage 2, by the LLM loss; everything else learns from stage 1
    silent = [n for n, p in bridge.named_parameters() if n.startswith("proj.") is False and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not silent, silent
    only = bridge.stage1_losses(x, mask, ids, tmask, objectives=["itg"])
    assert set(only) == {"itg"}


def test_stage1_learns_a_toy_alignment():
    """A few steps on fixed pairs lower all three losses (the objectives are wired to the parameters that matter)."""
    bridge = _stage1_bridge(hidden_dropout=0.0, attention_dropout=0.0).train()
    x, mask = _features()
    ids, tmask = _text()
    opt = torch.optim.AdamW(bridge.parameters(), lr=3e-3)
    torch.manual_seed(0)
    first = {k: v.item() for k, v in bridge.stage1_losses(x, mask, ids, tmask).items()}
    for _ in range(12):
        opt.zero_grad()
        sum(bridge.stage1_losses(x, mask, ids, tmask).values()).backward()
        opt.step()
    last = {k: v.item() for k, v in bridge.stage1_losses(x, mask, ids, tmask).items()}
    for k in first:
        assert last[k] < first[k], (k, first[k], last[k])


def test_stage1_itc_and_itg_match_the_per_position_reference():
    """ITG's vocabulary head runs on the valid text tokens only and one word-embedding lookup serves every objective:
    losses and gradients equal the straightforward form (head over every position, ignore_index on the padding,
    one lookup per objective)."""
    import torch.nn.functional as F
    from xmm.bridges._layers import key_mask

    bridge = _stage1_bridge(hidden_dropout=0.0, attention_dropout=0.0).eval()
    x, mask = _features()
    ids, tmask = _text()
    text, nq, ls = bridge.text, bridge.config.num_queries, bridge.config.label_smoothing

    def reference():
        kvs, cross = bridge.encoder_kv(x), key_mask(mask)
        ones = torch.ones(3, 1, dtype=torch.bool)
        cls = torch.cat([torch.full_like(ids[:, :1], text.cls_id), ids], 1)
        cls_mask = torch.cat([ones, tmask], 1)
        q = bridge.run(bridge.query_embeds(3, None), nq, None, kvs, cross)
        media = F.normalize(text.vision_proj(q).float(), dim=-1)
        t = bridge.run(bridge.embed_dropout(bridge.embed_norm(text.embed(cls))), 0, cls_mask[:, None, None, :], None, None)
        tf = F.normalize(text.text_proj(t[:, 0]).float(), dim=-1)
        i2t = torch.einsum("bqe,ne->bnq", media, tf).amax(-1) / text.temp
        t2i = torch.einsum("be,nqe->bnq", tf, media).amax(-1) / text.temp
        tgt = torch.arange(3)
        itc = (F.cross_entropy(i2t, tgt, label_smoothing=ls) + F.cross_entropy(t2i, tgt, label_smoothing=ls)) / 2
        dec = torch.cat([torch.full_like(ids[:, :1], text.dec_id), ids], 1)
        n = dec.shape[1]
        allow = torch.zeros(3, nq + n, nq + n, dtype=torch.bool)
        allow[:, :, :nq] = True
        allow[:, nq:, nq:] = torch.ones(n, n, dtype=torch.bool).tril()[None] & cls_mask[:, None, :]
        out = bridge.run(bridge.query_embeds(3, None, text.embed(dec)), nq, allow[:, None], kvs, cross)
        logits = text.lm_logits(out[:, nq:-1]).float()
        itg = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.masked_fill(~tmask, -100).reshape(-1),
                              ignore_index=-100, label_smoothing=ls)
        return {"itc": itc, "itg": itg}

    def grads(losses):
        bridge.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        return {n: p.grad.clone() for n, p in bridge.named_parameters() if p.grad is not None}

    want = reference()
    got = bridge.stage1_losses(x, mask, ids, tmask, objectives=["itc", "itg"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)
    g_want, g_got = grads(reference()), grads(bridge.stage1_losses(x, mask, ids, tmask, objectives=["itc", "itg"]))
    assert g_want.keys() == g_got.keys()
    for n in g_want:
        torch.testing.assert_close(g_got[n], g_want[n], rtol=1e-4, atol=1e-6, msg=n)


def test_itg_queries_never_see_the_text():
    """Grounded generation must pass the media through the queries: their outputs cannot depend on the text."""
    bridge = _stage1_bridge().eval()
    x, mask = _features()
    ids, tmask = _text()
    text = bridge.text
    dec = torch.cat([torch.full_like(ids[:, :1], text.dec_id), ids], 1)
    nq, n = bridge.config.num_queries, dec.shape[1]
    allow = torch.zeros(3, nq + n, nq + n, dtype=torch.bool)
    allow[:, :, :nq] = True
    allow[:, nq:, nq:] = torch.ones(n, n, dtype=torch.bool).tril()
    kvs = bridge.encoder_kv(x)
    from xmm.bridges._layers import key_mask

    def run(t):
        return bridge.run(bridge.query_embeds(3, None, text.embed(t)), nq, allow[:, None], kvs, key_mask(mask))

    other = dec.clone()
    other[:, 3:] = (other[:, 3:] + 7) % 50
    a, b = run(dec), run(other)
    torch.testing.assert_close(a[:, :nq], b[:, :nq], atol=1e-6, rtol=0)  # queries: unchanged
    torch.testing.assert_close(a[:, nq : nq + 3], b[:, nq : nq + 3], atol=1e-6, rtol=0)  # causal: earlier text too
    assert not torch.allclose(a[:, nq + 3 :], b[:, nq + 3 :])


def test_stage1_input_errors():
    x, mask = _features()
    ids, tmask = _text()
    plain = QFormerBridge(QFormerBridge.tiny_config(24, 16))
    with pytest.raises(ConfigError, match="text_branch"):
        plain.stage1_losses(x, mask, ids, tmask)
    bridge = _stage1_bridge()
    with pytest.raises(ShapeError, match=r"\[B, L\] with B = 3"):
        bridge.stage1_losses(x, mask, ids[:2], tmask[:2])
    with pytest.raises(ShapeError, match="vocab_size=50"):
        bridge.stage1_losses(x, mask, ids + 50, tmask)
    with pytest.raises(ShapeError, match="max_text_length"):
        bridge.stage1_losses(x, mask, torch.zeros(3, 12, dtype=torch.long))
    with pytest.raises(ConfigError, match="unknown stage-1 objectives"):
        bridge.stage1_losses(x, mask, ids, tmask, objectives=["itx"])


def test_shared_qformer_keeps_one_query_set_per_modality():
    cfg = QFormerBridge.tiny_config(24, 16).model_copy(update={"modalities": ["image", "audio"]})
    bridge = QFormerBridge(QFormerConfig.model_validate(cfg.model_dump())).eval()
    assert sorted(bridge.queries) == ["audio", "image"]
    x, mask = _features()
    a, b = bridge(x, mask, modality="image"), bridge(x, mask, modality="audio")
    assert not torch.allclose(a.embeds, b.embeds)
    with pytest.raises(ConfigError, match="modality"):
        bridge(x, mask)


def test_config_errors_name_the_field():
    from xmm.registry import get_registry

    with pytest.raises(ConfigError, match="hidden_size 30 is not a multiple of num_heads 4"):
        get_registry().create_bridge({"type": "qformer", "input_dim": 8, "output_dim": 8, "hidden_size": 30, "num_heads": 4})
    with pytest.raises(ConfigError, match="field 'num_queries'"):
        get_registry().create_bridge({"type": "qformer", "input_dim": 8, "output_dim": 8, "num_queries": 0})
    with pytest.raises(ConfigError, match="field 'modalities'"):
        get_registry().create_bridge({"type": "qformer", "input_dim": 8, "output_dim": 8, "modalities": ["a.b"]})


def test_itc_under_data_parallelism_equals_the_whole_batch(monkeypatch):
    """With torch.distributed, ITC contrasts against every process's batch: the mean of the two processes' losses is
    the single-process loss over their joint batch (the collective is simulated in-process)."""
    import torch.distributed as dist

    bridge = _stage1_bridge().eval()
    x, mask = _features()
    ids, tmask = _text()
    x, mask, ids, tmask = (torch.cat([t, t.flip(0)]) for t in (x, mask, ids, tmask))  # 6 pairs: 3 per process
    whole = bridge.stage1_losses(x, mask, ids, tmask, objectives=["itc"])["itc"]
    local0 = bridge.stage1_losses(x[:3], mask[:3], ids[:3], tmask[:3], objectives=["itc"])["itc"]
    seen: dict[tuple[int, int], torch.Tensor] = {}  # (rank, ndim) -> that process's local features
    rank = {"r": 0}
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: rank["r"])

    def all_gather(parts, tensor):
        seen[(rank["r"], tensor.dim())] = tensor.clone()
        for r in range(2):
            parts[r].copy_(seen.get((r, tensor.dim()), torch.zeros_like(tensor)))

    monkeypatch.setattr(dist, "all_gather", all_gather)
    halves = [slice(0, 3), slice(3, 6)]

    def loss_of(r):
        rank["r"] = r
        h = halves[r]
        return bridge.stage1_losses(x[h], mask[h], ids[h], tmask[h], objectives=["itc"])["itc"]

    loss_of(1)  # records process 1's features
    l0 = loss_of(0)
    l1 = loss_of(1)
    torch.testing.assert_close((l0 + l1) / 2, whole, atol=1e-5, rtol=1e-5)
    assert abs(l0.item() - local0.item()) > 1e-4  # the other process's pairs did serve as negatives
