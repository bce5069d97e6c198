"""Signal tokens and output heads on a MultimodalLM: vocabulary, trainable rows, projector dims, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from xmm.errors import ConfigError, IncompatibleCheckpointError
from xmm.llm import load_llm
from xmm.model.outputs import OutputConfig, find_signal_groups, gather_signal_states


def test_find_signal_groups_and_gather():
    sig = [10, 11, 12]
    ids = torch.tensor([
        [1, 10, 11, 12, 2, 10, 11, 12],   # two complete groups
        [1, 2, 11, 12, 3, 4, 5, 6],       # first token missing
        [1, 2, 3, 4, 5, 6, 7, 8],         # none
    ])
    groups = find_signal_groups(ids, sig)
    assert [(g.batch_index, g.start, g.present) for g in groups] == [
        (0, 1, [True] * 3), (0, 5, [True] * 3), (1, 1, [False, True, True]),
    ]
    hidden = torch.arange(3 * 8, dtype=torch.float32).view(3, 8, 1).expand(3, 8, 2)
    states, mask = gather_signal_states(hidden, groups, 3)
    assert states.shape == (3, 3, 2)
    assert states[:, :, 0].tolist() == [[1, 2, 3], [5, 6, 7], [9, 10, 11]]
    assert mask.tolist() == [[True] * 3, [True] * 3, [False, True, True]]
    # padding never counts
    assert find_signal_groups(ids, sig, attention_mask=torch.zeros_like(ids)) == []
    # repeated last tokens are strays, not groups overlapping the first one
    rep = torch.tensor([[10, 11, 12, 12, 12, 10, 11]])
    assert [(g.start, g.present) for g in find_signal_groups(rep, sig)] == [(0, [True] * 3), (5, [True, True, False])]


def test_output_config_defaults_and_errors():
    cfg = OutputConfig(decoder="diffusers")
    # the short prefix is the decoder's (DiffusersDecoder says "img" for images), else the output's name
    assert cfg.tokens_for("image", "img") == ["<img_0>", "<img_1>", "<img_2>", "<img_3>"]
    assert cfg.tokens_for("image") == ["<image_0>", "<image_1>", "<image_2>", "<image_3>"]
    assert OutputConfig(decoder="x", num_signal_tokens=2).tokens_for("gesture") == ["<gesture_0>", "<gesture_1>"]
    from xmm.model.config import MultimodalConfig

    with pytest.raises(ConfigError) as e:
        MultimodalConfig.load({"outputs": {"image": {"decoder": "diffusers", "projector": {"type": "linear", "input_dim": 3}}}})
    assert "outputs.image.projector" in e.value.field and "filled in by the model" in str(e.value)
    with pytest.raises(ConfigError) as e:
        MultimodalConfig.load({"outputs": {"image": {"decoder": "diffusers", "num_signal_tokens": -1}}})
    assert e.value.field == "outputs.image.num_signal_tokens"


def test_signal_tokens_projector_and_trainable_parts(image_model):
    m = image_model
    spec = m.decoder_specs["image"]
    assert spec["signal_tokens"] == ["<img_0>", "<img_1>", "<img_2>", "<img_3>"]
    assert spec["signal_ids"] == [m.tokenizer.convert_tokens_to_ids(t) for t in spec["signal_tokens"]]
    # each signal token is one token of the vocabulary, beyond the frozen base matrix
    assert m.tokenizer("a <img_0><img_1>", add_special_tokens=False).input_ids[-2:] == spec["signal_ids"][:2]
    assert min(spec["signal_ids"]) >= m.base_vocab_size
    proj = m.projectors["image"]
    assert (proj.config.input_dim, tuple(proj.config.output_shape), proj.config.num_input_tokens) == (64, (16, 32), 4)
    comps = m.named_components()
    assert set(comps) >= {"llm:embeddings:new", "projector:image"}
    # only the new rows train, not the embedding matrix or the LM head
    rows = comps["llm:embeddings:new"]
    assert sum(p.numel() for p in rows) == 4 * 64
    assert not any(p.requires_grad for p in m.llm.parameters() if p.shape[0] == m.base_vocab_size)
    # the decoder is frozen and contributes nothing to the model's parameters or state dict
    assert not any(k.startswith("decoders.") for k in m.state_dict())
    # LM-head columns exist for the signal tokens
    batch = m.collator()([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<img_0>"}]}])
    logits = m(batch).logits
    assert logits.shape[-1] > max(spec["signal_ids"])
    assert torch.isfinite(logits[..., spec["signal_ids"]]).all()


def test_project_signals_follows_the_spliced_sequence(image_model):
    from xmm.model.outputs import project_signals

    m = image_model
    batch = m.collator()([
        {"messages": [{"role": "user", "content": "a red circle"}, {"role": "assistant", "content": "ok <img_0><img_1><img_2><img_3>"}]},
        {"messages": [{"role": "user", "content": "nothing"}, {"role": "assistant", "content": "no picture"}]},
    ])
    out = m(batch, output_hidden_states=True)
    cond, groups = project_signals(m, "image", out.last_hidden_state, out.inputs.token_ids, out.inputs.attention_mask)
    assert cond.shape == (1, 16, 32) and [g.batch_index for g in groups] == [0]
    assert all(groups[0].present)


def test_text_decoder_gets_no_signal_tokens_and_reads_answers(tiny_llm, image_decoder):
    from xmm.decoder import Decoder, DecoderOutput
    from xmm.model.multimodal import MultimodalLM

    class Upper(Decoder):
        input_kind = "text"
        modality = "shout"

        def forward(self, conditioning=None, *, text=None, **kw):
            return DecoderOutput("shout", [t.upper() if "!" in t else None for t in text])

    m = MultimodalLM.from_config({"modalities": {}, "autocast": "off", "device": "cpu",
                                  "outputs": {"shout": {"decoder": "upper"}}}, llm=tiny_llm, decoders={"shout": Upper()})
    assert m.decoder_specs["shout"]["signal_tokens"] == [] and "shout" not in m.projectors
    from xmm.model.outputs import decode_generated

    rows = decode_generated(m, None, [[1], [2]], ["hey!", "calm"])
    assert [list(r) for r in rows] == [["shout"], []]
    assert rows[0]["shout"][0].value == "HEY!"


def test_missing_decoder_config_says_how_to_fix(tiny_llm):
    from xmm.model.multimodal import MultimodalLM

    with pytest.raises(ConfigError) as e:
        MultimodalLM.from_config({"modalities": {}, "device": "cpu", "outputs": {"image": {"decoder": "diffusers"}}}, llm=tiny_llm)
    assert e.value.field == "outputs.image.decoder_config" and "decoders=" in str(e.value)
    with pytest.raises(ConfigError) as e:
        MultimodalLM.from_config({"modalities": {}, "device": "cpu", "outputs": {"image": {"decoder": "nope"}}}, llm=tiny_llm)
    assert e.value.field == "outputs.image.decoder"
    with pytest.raises(ConfigError) as e:
        MultimodalLM.from_config({"modalities": {}, "device": "cpu",
                                  "outputs": {"image": {"decoder": "diffusers", "decoder_config": {"pipeline": object()}}}},
                                 llm=tiny_llm)
    assert e.value.field == "outputs.image.decoder_config.pipeline" and "decoders=" in str(e.value)


def test_checkpoint_roundtrip_with_outputs(image_model, tiny_llm_dir, image_decoder, tmp_path):
    from xmm.model.multimodal import MultimodalLM

    m = image_model
    with torch.no_grad():
        for p in m.projectors["image"].parameters():
            p.add_(torch.randn_like(p) * 0.1)
        m.new_tokens.trainable_in.add_(1.0)
    m.save_pretrained(tmp_path / "ck")
    assert (tmp_path / "ck" / "projectors" / "image" / "model.safetensors").exists()
    manifest = json.loads((tmp_path / "ck" / "xmm.json").read_text())
    entry = manifest["decoders"]["image"]
    assert entry["signal_tokens"] == ["<img_0>", "<img_1>", "<img_2>", "<img_3>"]
    assert entry["decoder_id"] == "diffusers:StableDiffusionPipeline" and entry["projector"] == "projectors/image"
    # no frozen weights: nothing of the pipeline or the LLM is written
    sizes = sum(f.stat().st_size for f in (tmp_path / "ck").rglob("*") if f.is_file())
    assert sizes < 2_000_000
    # reload on the same LLM weights (loaded again from its folder), with the decoder passed in
    m2 = MultimodalLM.from_pretrained(tmp_path / "ck", llm=load_llm(str(tiny_llm_dir)), decoders={"image": image_decoder})
    assert m2.decoder_specs["image"]["signal_ids"] == m.decoder_specs["image"]["signal_ids"]
    h = torch.randn(2, 4, 64)
    torch.testing.assert_close(m2.projectors["image"].eval()(h), m.projectors["image"].eval()(h))
    torch.testing.assert_close(m2.new_tokens.trainable_in, m.new_tokens.trainable_in)
    # a decoder with another conditioning shape cannot take the saved projector
    from xmm.decoders.diffusion import DiffusersDecoder
    from xmm.decoders.tiny import tiny_stable_diffusion

    other = DiffusersDecoder(tiny_stable_diffusion(hidden=16, image_size=16))
    with pytest.raises(IncompatibleCheckpointError, match="output_shape"):
        MultimodalLM.from_pretrained(tmp_path / "ck", llm=load_llm(str(tiny_llm_dir)), decoders={"image": other})


def test_decode_generated_uses_complete_groups_of_the_answer_only(image_model):
    from xmm.model.outputs import decode_generated

    m = image_model
    ids = m.decoder_specs["image"]["signal_ids"]
    # the prompt itself holds signal tokens (an earlier turn's image): they must not be decoded again
    conv = [{"role": "user", "content": "draw"}, {"role": "assistant", "content": "<img_0><img_1><img_2><img_3>"},
            {"role": "user", "content": "again"}]
    batch = m.collator(padding_side="left", add_generation_prompt=True)([{"messages": conv}, {"messages": conv}])
    with torch.no_grad():
        spliced, _, _ = m.embed(batch)
    eos = m.tokenizer.eos_token_id
    answers = [[5, *ids, eos], [5, *ids[:3], eos]]  # row 1 misses <img_3>
    rows = decode_generated(m, spliced, answers, ["x", "y"])
    assert list(rows[0]) == ["image"] and rows[1] == {}
    (item,) = rows[0]["image"]
    assert item.modality == "image" and item.value.size == (32, 32)


def test_save_produced_names_files_and_skips_non_media(tmp_path, image_decoder):
    from xmm.decoder import Decoder
    from xmm.model.outputs import ProducedOutput, save_produced

    img = image_decoder(torch.randn(1, 16, 32)).outputs[0]
    (tmp_path / "xmm-image-0.png").write_bytes(b"taken")
    saved = save_produced({"image": [ProducedOutput("image", img, image_decoder)] * 2,
                           "device": [ProducedOutput("device", "reboot()", Decoder())]}, tmp_path)
    assert [p.name if p else None for _, p in saved] == ["xmm-image-1.png", "xmm-image-2.png", None]
    assert (tmp_path / "xmm-image-0.png").read_bytes() == b"taken"  # never overwritten


def test_device_command_decoder_plugs_in_as_a_text_output(tiny_llm, tiny_llm_dir, tmp_path):
    """The device plugin's command decoder uses the same Decoder interface: answers that are commands come out as
    results, other answers produce nothing."""
    pytest.importorskip("xmm_plugin_device")
    from xmm.model.multimodal import MultimodalLM
    from xmm.model.outputs import decode_generated, save_produced

    m = MultimodalLM.from_config({"modalities": {}, "device": "cpu", "outputs": {"device": {"decoder": "device-command"}}},
                                 llm=tiny_llm)
    assert m.decoder_specs["device"]["input_kind"] == "text" and m.decoder_specs["device"]["signal_tokens"] == []
    rows = decode_generated(m, None, [[1], [2]], ["set_brightness(level=50)", "hello there"])
    assert rows[1] == {}
    (item,) = rows[0]["device"]
    assert item.value.command is not None and item.value.command.level == 50
    # the decoder says what it produced: a result (never a file), described as JSON
    assert item.kind == "result" and m.decoder_specs["device"]["output_kind"] == "result"
    described = json.loads(json.dumps(item.describe()))
    assert described["command"] == {"action": "set_brightness", "level": 50} and described["ok"] and described["executed"]
    assert save_produced(rows[0], tmp_path) == [(item, None)] and not list(tmp_path.iterdir())
    # declaring signal tokens for it uses the decoder's own short prefix
    again = MultimodalLM.from_config({"modalities": {}, "device": "cpu", "outputs": {"device": {
        "decoder": "device-command", "num_signal_tokens": 2}}}, llm=load_llm(str(tiny_llm_dir)))
    assert again.decoder_specs["device"]["signal_tokens"] == ["<dev_0>", "<dev_1>"]


def test_media_outputs_describe_their_shape(image_decoder):
    img = image_decoder(torch.randn(1, 16, 32)).outputs[0]
    assert image_decoder.describe_output(img) == {"modality": "image", "kind": "media", "shape": [32, 32, 3]}
    assert image_decoder.signal_prefix == "img" and image_decoder.produced(img)


def test_decoder_from_a_pipeline_folder_is_rebuilt_on_load(tiny_llm_dir, tiny_projector, tiny_sd, tmp_path):
    from xmm.decoders.diffusion import DiffusersDecoder
    from xmm.model.multimodal import MultimodalLM

    tiny_sd.save_pretrained(tmp_path / "pipe")
    dec = DiffusersDecoder(pipeline=str(tmp_path / "pipe"), num_inference_steps=2)
    cfg = {"modalities": {}, "device": "cpu", "outputs": {"image": {"decoder": "diffusers", "projector": tiny_projector}}}
    m = MultimodalLM.from_config(cfg, llm=load_llm(str(tiny_llm_dir)), decoders={"image": dec})
    assert m.config.outputs["image"].decoder_config == {"pipeline": str(tmp_path / "pipe"), "num_inference_steps": 2}
    m.save_pretrained(tmp_path / "ck")
    m2 = MultimodalLM.from_pretrained(tmp_path / "ck", llm=load_llm(str(tiny_llm_dir)))
    assert m2.decoders["image"].source == str(tmp_path / "pipe") and m2.decoders["image"].config.num_inference_steps == 2
