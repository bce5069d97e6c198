"""Splicing media into the LLM input, the LM loss, gradients, shared bridges and named components."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from xmm.errors import ConfigError, PromptError, ShapeError
from xmm.model import IGNORE_INDEX, MultimodalLM, splice
from xmm.model.collator import MultimodalBatch


def _interleaved(media_dir: Path) -> dict:
    # two images and an audio clip interleaved with text, over two user turns
    return {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "first "}, {"type": "image", "path": "red.png"},
                                     {"type": "text", "text": " then "}, {"type": "audio", "path": "long.npy"},
                                     {"type": "text", "text": " ok?"}]},
        {"role": "assistant", "content": "yes"},
        {"role": "user", "content": [{"type": "image", "path": "blue.png"}, {"type": "text", "text": "and this?"}]},
        {"role": "assistant", "content": "blue"},
    ], "base_dir": media_dir}


@pytest.mark.parametrize("side", ["right", "left"])
def test_spliced_positions_are_exactly_the_placeholders(tiny_model, media_dir: Path, side: str) -> None:
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    batch = tiny_model.collator(padding_side=side)([short, _interleaved(media_dir)])
    feats = tiny_model.encode_media(batch.media)
    expected_media, _, _ = tiny_model.bridge_media(batch.media, feats)
    assert [e.shape[0] for e in expected_media] == [4, 5, 4]  # image: 2x2 grid; audio: 40 samples / 8
    out = tiny_model(batch)
    sp = out.inputs
    emb = tiny_model.llm.get_input_embeddings()
    for b in range(2):
        real = batch.attention_mask[b].bool()
        ids, labels = batch.input_ids[b][real], batch.labels[b][real]
        new_real = sp.attention_mask[b].bool()
        # padding stays on its side
        pads = (~new_real).nonzero().squeeze(-1)
        if len(pads):
            expected = torch.arange(len(pads)) if side == "left" else torch.arange(new_real.sum(), sp.attention_mask.shape[1])
            assert (pads == expected.to(pads.device)).all()
        got_embeds = sp.inputs_embeds[b][new_real]
        got_media = sp.media_mask[b][new_real]
        got_labels = sp.labels[b][new_real]
        got_pos = sp.position_ids[b][new_real]
        assert got_pos.tolist() == list(range(int(new_real.sum())))
        # walk the original tokens: text tokens keep their embedding and label; each placeholder becomes its Q rows
        j, k = 0, sum(1 for it in batch.media if it.batch_index < b)
        ph = set(tiny_model.placeholder_ids)
        for t, lab in zip(ids.tolist(), labels.tolist()):
            if t in ph:
                q = expected_media[k].shape[0]
                assert got_media[j : j + q].all()
                assert torch.allclose(got_embeds[j : j + q], expected_media[k], atol=1e-6)
                assert (got_labels[j : j + q] == IGNORE_INDEX).all()
                offset = int(sp.attention_mask[b].shape[0] - new_real.sum()) if side == "left" else 0
                assert sp.media_spans[k] == (b, offset + j, q)
                j, k = j + q, k + 1
            else:
                assert not got_media[j]
                assert torch.equal(got_embeds[j], emb(torch.tensor([t]))[0])
                assert int(got_labels[j]) == lab
                j += 1
        assert j == int(new_real.sum())
    assert len(sp.media_spans) == 3


def test_loss_is_answer_only_and_gradients_reach_bridges_not_llm(tiny_model, media_dir: Path) -> None:
    tiny_model.train()
    batch = tiny_model.collator()([_interleaved(media_dir)])
    out = tiny_model(batch)
    # reference loss from the logits by hand
    logits, labels = out.logits[:, :-1], out.labels[:, 1:]
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, ref)
    out.loss.backward()
    for m, bridge in tiny_model.bridges.items():
        grads = [p.grad for p in bridge.parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), m
    base = [p for n, p in tiny_model.llm.named_parameters() if "new" not in n]
    assert base and all(not p.requires_grad and p.grad is None for p in base)
    assert all(p.grad is None for p in tiny_model.encoders["image"].parameters())
    # the cheap path (LM head only where a label follows) gives the same loss
    cheap = tiny_model(batch, logits="labels")
    assert torch.allclose(cheap.loss, out.loss, atol=1e-5)
    assert cheap.logits.shape[1] == int((out.labels[0, 1:] != IGNORE_INDEX).sum())


def test_feature_provider_seam(tiny_model, media_dir: Path) -> None:
    batch = tiny_model.collator()([_interleaved(media_dir)])
    seen = []

    def provider(items):
        seen.extend(it.modality for it in items)
        return tiny_model.encode_media(items)

    ref = tiny_model(batch).loss
    tiny_model.feature_provider = provider
    assert torch.allclose(tiny_model(batch).loss, ref)
    assert seen == ["image", "audio", "image"]
    tiny_model.feature_provider = lambda items: []
    with pytest.raises(ShapeError, match="returned 0 outputs for 3"):
        tiny_model(batch)


def test_splice_rejects_count_mismatch() -> None:
    ids = torch.tensor([[5, 9, 6]])
    with pytest.raises(PromptError, match="1 placeholders but 0 media"):
        splice(torch.zeros(1, 3, 4), ids, torch.ones_like(ids), [], [9])
    with pytest.raises(ShapeError, match=r"expected \[Q, 4\]"):
        splice(torch.zeros(1, 3, 4), ids, torch.ones_like(ids), [torch.zeros(2, 3)], [9])


def test_shared_bridge(registry, tiny_llm, tiny_config, media_dir: Path) -> None:
    shared = {"image": {"shared_bridge": "s"}, "audio": {"shared_bridge": "s", "encoder_config": {"frame": 6}}}
    model = MultimodalLM.from_config(tiny_config(modalities=shared, shared_bridges={"s": {"type": "mlp"}}),
                                     llm=tiny_llm, registry=registry)
    assert model.bridges["image"] is model.bridges["audio"]
    assert model.bridge_names == {"image": "s", "audio": "s"}
    out = model(model.collator()([_interleaved(media_dir)]))
    assert [q for _, _, q in out.inputs.media_spans] == [4, 6, 4]  # 40 samples / frames of 6
    out.loss.backward()
    assert model.bridges["image"].mlp[0].weight.grad is not None


def test_bridge_config_errors(registry, tiny_llm, tiny_config) -> None:
    bad_dims = tiny_config(modalities={"image": {"shared_bridge": "s"}, "audio": {"shared_bridge": "s"}},
                           shared_bridges={"s": {"type": "linear"}})
    with pytest.raises(ConfigError, match=r"different output dims \[6, 8\]"):
        MultimodalLM.from_config(bad_dims, llm=tiny_llm, registry=registry)
    with pytest.raises(ConfigError, match=r"modalities\.image\.bridge\.type.*no bridge named 'nope'"):
        MultimodalLM.from_config(tiny_config(modalities={"image": {"bridge": {"type": "nope"}}}), llm=tiny_llm, registry=registry)
    with pytest.raises(ConfigError, match=r"modalities\.image\.bridge.*hidden_dim"):
        MultimodalLM.from_config(tiny_config(modalities={"image": {"bridge": {"hidden_dim": "x"}}}), llm=tiny_llm, registry=registry)
    with pytest.raises(ConfigError, match=r"shared_bridge 'zz', which is not defined"):
        MultimodalLM.from_config(tiny_config(modalities={"image": {"shared_bridge": "zz"}}), llm=tiny_llm, registry=registry)
    with pytest.raises(ConfigError, match=r"modalities\.image\.encoder_config.*unexpected keyword argument 'bogus'"):
        MultimodalLM.from_config(tiny_config(modalities={"image": {"encoder_config": {"bogus": 1}}}), llm=tiny_llm, registry=registry)
    with pytest.raises(ConfigError, match=r"modalities\.smell.*no modality named 'smell'"):
        MultimodalLM.from_config(tiny_config(modalities={"smell": {}}), llm=tiny_llm, registry=registry)


def test_text_branch_vocabulary_defaults_to_the_tokenizer(registry, tiny_llm, tiny_config) -> None:
    # the trainer feeds LLM token ids to the Q-Former's stage-1 text branch, so its vocabulary must cover them
    qformer = {"type": "qformer", "num_queries": 2, "num_layers": 2, "hidden_size": 16, "num_heads": 2,
               "intermediate_size": 32, "text_branch": True}
    model = MultimodalLM.from_config(tiny_config(modalities={"image": {"bridge": qformer}}), llm=tiny_llm, registry=registry)
    assert model.bridges["image"].config.vocab_size == tiny_llm.model.config.vocab_size
    explicit = MultimodalLM.from_config(tiny_config(modalities={"image": {"bridge": {**qformer, "vocab_size": 99}}}),
                                        llm=tiny_llm, registry=registry)
    assert explicit.bridges["image"].config.vocab_size == 99


def test_named_components_and_trainable_encoder(registry, tiny_llm, tiny_config) -> None:
    cfg = tiny_config(modalities={"device": {}, "image": {"bridge": {"type": "linear"}}},
                      signal_tokens=["<sig0>", "<sig1>"], lora={"r": 2, "alpha": 4})
    model = MultimodalLM.from_config(cfg, llm=tiny_llm, registry=registry)
    comps = model.named_components()
    assert set(comps) == {"bridge:device", "bridge:image", "encoder:device", "encoder:image", "llm:lora", "llm:embeddings:new"}
    assert all(p.requires_grad for p in comps["llm:lora"]) and len(comps["llm:lora"]) == 2 * 2 * 2  # 2 layers x q,v x A,B
    assert all(p.requires_grad for p in comps["llm:embeddings:new"])
    assert all(p.requires_grad for p in model.encoders["device"].parameters())  # trainable encoder
    assert not any(p.requires_grad for p in model.encoders["image"].parameters())
    ids = [model.tokenizer.convert_tokens_to_ids(t) for t in ("<sig0>", "<sig1>")]
    ph = model.tokenizer.convert_tokens_to_ids("<device>")
    # gradients reach the device encoder, the signal-token rows and LoRA
    ex = {"messages": [{"role": "user", "content": [{"type": "device", "device": [1, 2, 3, 4]}, {"type": "text", "text": "go"}]},
                       {"role": "assistant", "content": "<sig0><sig1> done"}]}
    model.train()
    out = model(model.collator()([ex]))
    assert out.logits.shape[-1] == max(ids) + 1 and ph < max(ids)  # widened head, placeholder column never predicted
    assert torch.isinf(out.logits[0, :, ph]).all()
    out.loss.backward()
    assert model.encoders["device"].lin.weight.grad.abs().sum() > 0
    assert model.new_tokens.trainable_in.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in comps["llm:lora"])


def test_generation_batch_type(tiny_model) -> None:
    batch = tiny_model.collator(padding_side="left", add_generation_prompt=True)(["hi", "hello there"])
    assert isinstance(batch, MultimodalBatch) and len(batch) == 2


def test_instruction_aware_bridge_reads_the_text_of_its_own_turn(registry, tiny_llm, tiny_config, media_dir: Path) -> None:
    """A bridge with ``uses_context`` gets the frozen LLM embeddings of exactly the text of the turn that holds the
    item (placeholders left out), with either padding side; other bridges in the same batch do not."""
    torch.manual_seed(0)
    cfg = tiny_config(modalities={"image": {"bridge": {"type": "guided-mlp", "guided_tokens": 2}}, "audio": {}})
    model = MultimodalLM.from_config(cfg, llm=tiny_llm, registry=registry)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    bridge = model.bridges["image"]
    original = bridge.forward

    def spy(features, mask=None, *, modality=None, context=None, context_mask=None):
        seen.append((context, context_mask))
        return original(features, mask, modality=modality, context=context, context_mask=context_mask)

    bridge.forward = spy
    tok = model.tokenizer
    table = model.llm.get_input_embeddings()
    for side in ("right", "left"):
        seen.clear()
        batch = model.collator(padding_side=side)([_interleaved(media_dir)])
        model(batch)
        (ctx, cmask), = seen
        assert ctx.shape[0] == 2  # both images of the example, in order
        ids = batch.input_ids[0]
        for row, item in enumerate(it for it in batch.media if it.modality == "image"):
            start, end = item.context
            text = tok.decode(ids[start:end])
            assert ("first" in text and "ok?" in text) if row == 0 else ("and this?" in text and "first" not in text)
            keep = [int(t) for t in ids[start:end] if int(t) not in model.placeholder_ids]
            n = int(cmask[row].sum())
            assert n == len(keep)
            torch.testing.assert_close(ctx[row, :n], table(torch.tensor(keep, device=ctx.device)).float())
    # the question steers the guided tokens (the last G rows of the bridge output), not the per-token ones
    def bridge_out(question: str) -> torch.Tensor:
        seen.clear()
        outputs: list[torch.Tensor] = []

        def keep(features, mask=None, *, modality=None, context=None, context_mask=None):
            out = original(features, mask, modality=modality, context=context, context_mask=context_mask)
            outputs.append(out.embeds[0])
            return out

        bridge.forward = keep
        ex = {"messages": [{"role": "user", "content": [{"type": "image", "path": "red.png"}, {"type": "text", "text": question}]},
                           {"role": "assistant", "content": "x"}], "base_dir": media_dir}
        with torch.no_grad():
            model.embed(model.collator()([ex]))
        return outputs[0]

    a, b = bridge_out("What colour is it?"), bridge_out("How many are there?")
    g = bridge.config.guided_tokens
    torch.testing.assert_close(a[:-g], b[:-g])
    assert not torch.allclose(a[-g:], b[-g:])
    bridge.forward = original
